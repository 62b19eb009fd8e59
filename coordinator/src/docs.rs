//! Shell completions and man pages, generated from the same clap definitions
//! the binaries parse with, so they cannot drift from the real flags. One
//! implementation for every program, in [`apiary_proto::process`].

pub use apiary_proto::process::{write_completions, write_man_pages};
