//! Shell completions and man pages, generated from the same clap definitions
//! the binaries parse with, so they cannot drift from the real flags.

use std::path::Path;

use clap::Command;

/// Writes `name.1` and one page per subcommand (`name-sub.1`, recursively).
pub fn write_man_pages(cmd: &Command, dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    write_page(cmd.clone(), cmd.get_name().to_string(), dir, &mut written)?;
    Ok(written)
}

fn write_page(
    cmd: Command,
    name: String,
    dir: &Path,
    written: &mut Vec<std::path::PathBuf>,
) -> std::io::Result<()> {
    let cmd = cmd.name(name.clone());
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, out)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_page(
            sub.clone(),
            format!("{name}-{}", sub.get_name()),
            dir,
            written,
        )?;
    }
    Ok(())
}

/// Completion script for `shell` on stdout-like `out`. Rendered first and
/// written once: `clap_complete::generate` panics when a write fails, and a
/// reader that stops early (`... | head`) is not an error, so a closed pipe
/// ends quietly; any other write error is returned.
pub fn write_completions(
    cmd: &mut Command,
    shell: clap_complete::Shell,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, cmd, name, &mut script);
    match out.write_all(&script).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
