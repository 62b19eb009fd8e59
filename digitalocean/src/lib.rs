//! apiary-digitalocean (being written).
