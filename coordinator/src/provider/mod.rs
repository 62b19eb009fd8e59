//! Providers make the hosts a cluster spec asks for. `manual` makes none (hosts
//! join by themselves); `lab` makes network-namespace hosts on this machine;
//! `digitalocean` makes droplets booted by cloud-init.

pub mod digitalocean;
pub mod lab;
