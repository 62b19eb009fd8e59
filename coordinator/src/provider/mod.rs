//! Providers make the hosts a cluster spec asks for. `manual` makes none (hosts
//! join by themselves); `lab` makes network-namespace hosts on this machine.

pub mod lab;
