//! apiary-lab (being written).
