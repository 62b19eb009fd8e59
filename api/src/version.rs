//! Which build a program is, and which agent builds a coordinator works with.
//!
//! Every apiary binary carries its version in a *stamp*: a fixed-size block
//! of bytes, `apiary-version:` then the version then NUL padding, kept in
//! the binary's read-only data. The program reads its own stamp at run time
//! ([`current`]), and anyone holding the file can read it without running
//! it ([`find_stamp`]): the coordinator learns the version of the agent
//! build it serves for `ctl hosts upgrade` that way, for any architecture.
//! A release (or a test) can give a built binary another version by
//! rewriting the stamp in place ([`restamp`]), without compiling again,
//! much as Go's `-X` linker flag sets a string.
//!
//! Compatibility ([`compatibility`]) follows semantic versioning: an agent
//! works with a coordinator of the same major version (the same minor
//! while the major is 0) that is not older than [`OLDEST_AGENT`].

use std::fmt;

/// How many bytes the stamp takes, its prefix included.
pub const STAMP_LEN: usize = 64;
const PREFIX: &[u8] = b"apiary-version:";
/// The longest version a stamp holds.
pub const MAX_VERSION_LEN: usize = STAMP_LEN - PREFIX.len() - 1;

/// The oldest agent version this coordinator's contract still serves.
/// Raise it when a change to the session or the operations needs agents to
/// understand something new; older agents are then told to upgrade.
pub const OLDEST_AGENT: &str = "0.1.0";

const fn stamp_of(version: &str) -> [u8; STAMP_LEN] {
    let mut out = [0u8; STAMP_LEN];
    let v = version.as_bytes();
    assert!(v.len() <= MAX_VERSION_LEN, "version too long for the stamp");
    let mut i = 0;
    while i < PREFIX.len() {
        out[i] = PREFIX[i];
        i += 1;
    }
    let mut j = 0;
    while j < v.len() {
        out[PREFIX.len() + j] = v[j];
        j += 1;
    }
    out
}

/// This build's stamp. `#[used]` keeps it in every binary even where
/// nothing reads it, so every apiary binary can be told apart by its file.
#[used]
static STAMP: [u8; STAMP_LEN] = stamp_of(env!("CARGO_PKG_VERSION"));

/// This program's version, as its stamp says (which [`restamp`] may have
/// changed since it was compiled).
pub fn current() -> &'static str {
    // Read through an opaque reference: the compiler would otherwise fold
    // the read into the version it compiled, and a restamped binary would
    // still report the old one.
    let stamp: &'static [u8; STAMP_LEN] = std::hint::black_box(&STAMP);
    parse_stamp(stamp).unwrap_or(env!("CARGO_PKG_VERSION"))
}

/// The version inside one stamp-sized block, if it is one.
fn parse_stamp(block: &[u8]) -> Option<&str> {
    let rest = block.get(..STAMP_LEN)?.strip_prefix(PREFIX)?;
    let end = rest.iter().position(|&b| b == 0)?;
    if rest[end..].iter().any(|&b| b != 0) {
        return None;
    }
    let version = std::str::from_utf8(&rest[..end]).ok()?;
    Version::parse(version).ok()?;
    Some(version)
}

/// Where a stamp sits in a file's bytes, and the version it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub offset: usize,
    pub version: String,
}

/// Why a file's stamp cannot be read or rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    #[error(
        "no apiary version stamp in the file: it is not an apiary binary of version 0.1 or later"
    )]
    Missing,
    #[error(
        "{count} version stamps in the file (at bytes {offsets:?}); an apiary binary holds one"
    )]
    Ambiguous { count: usize, offsets: Vec<usize> },
    #[error("{version:?} is not a version for a stamp: {reason}")]
    BadVersion { version: String, reason: String },
}

/// The one stamp in `bytes` (a whole binary).
pub fn find_stamp(bytes: &[u8]) -> Result<Stamp, StampError> {
    let mut scanner = StampScanner::default();
    scanner.feed(bytes);
    scanner.finish()
}

/// A stamp-finder fed a file a chunk at a time (the coordinator hashes the
/// agent binary in 1 MiB reads and looks for the stamp in the same pass).
#[derive(Debug, Default)]
pub struct StampScanner {
    /// The last bytes of the previous chunk, so a stamp across a chunk
    /// boundary is found.
    tail: Vec<u8>,
    /// File offset of `tail[0]`.
    tail_at: usize,
    found: Vec<Stamp>,
}

impl StampScanner {
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut window = std::mem::take(&mut self.tail);
        let window_at = self.tail_at;
        window.extend_from_slice(chunk);
        let mut from = 0;
        while let Some(at) = find(&window[from..], PREFIX) {
            let offset = from + at;
            if window.len() - offset < STAMP_LEN {
                break; // maybe a stamp, completed by the next chunk
            }
            if let Some(version) = parse_stamp(&window[offset..]) {
                let stamp = Stamp {
                    offset: window_at + offset,
                    version: version.to_string(),
                };
                if !self.found.contains(&stamp) {
                    self.found.push(stamp);
                }
            }
            from = offset + 1;
        }
        let keep = window.len().saturating_sub(STAMP_LEN - 1);
        self.tail_at = window_at + keep;
        self.tail = window.split_off(keep);
    }

    pub fn finish(self) -> Result<Stamp, StampError> {
        let mut found = self.found;
        match found.len() {
            0 => Err(StampError::Missing),
            1 => Ok(found.remove(0)),
            count => Err(StampError::Ambiguous {
                count,
                offsets: found.iter().map(|s| s.offset).collect(),
            }),
        }
    }
}

/// Gives the binary in `bytes` another version: its one stamp rewritten.
pub fn restamp(bytes: &mut [u8], version: &str) -> Result<(), StampError> {
    let bad = |reason: String| StampError::BadVersion {
        version: version.to_string(),
        reason,
    };
    if version.len() > MAX_VERSION_LEN {
        return Err(bad(format!("longer than {MAX_VERSION_LEN} bytes")));
    }
    Version::parse(version).map_err(|e| bad(e.to_string()))?;
    let stamp = find_stamp(bytes)?;
    let mut block = [0u8; STAMP_LEN];
    block[..PREFIX.len()].copy_from_slice(PREFIX);
    block[PREFIX.len()..PREFIX.len() + version.len()].copy_from_slice(version.as_bytes());
    bytes[stamp.offset..stamp.offset + STAMP_LEN].copy_from_slice(&block);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A semantic version (`semver` rules, build metadata ignored for order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(semver::Version);

impl Version {
    pub fn parse(text: &str) -> Result<Version, semver::Error> {
        semver::Version::parse(text).map(Version)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Whether a coordinator works with an agent of some version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compatibility {
    Compatible,
    /// Older than the coordinator accepts: the agent is told to upgrade
    /// (`ctl hosts upgrade NODE`), and does no cluster work until it has.
    TooOld {
        oldest: String,
    },
    /// A newer series than the coordinator's: upgrade the coordinator.
    TooNew {
        coordinator: String,
    },
    /// Not a version at all.
    Unreadable,
}

/// Whether a coordinator of version `coordinator` works with an agent of
/// version `agent`, given the oldest agent it accepts.
pub fn compatibility(coordinator: &str, oldest: &str, agent: &str) -> Compatibility {
    let (Ok(c), Ok(o), Ok(a)) = (
        semver::Version::parse(coordinator),
        semver::Version::parse(oldest),
        semver::Version::parse(agent),
    ) else {
        return Compatibility::Unreadable;
    };
    let series = |v: &semver::Version| {
        if v.major == 0 {
            (0, v.minor)
        } else {
            (v.major, 0)
        }
    };
    if series(&a) > series(&c) {
        return Compatibility::TooNew {
            coordinator: coordinator.to_string(),
        };
    }
    // Pre-release agents of the oldest version count as that version: a
    // test or a release candidate is not refused for its suffix. A new
    // major series raises `OLDEST_AGENT` with it.
    let a_release = semver::Version::new(a.major, a.minor, a.patch);
    if a_release < o {
        return Compatibility::TooOld {
            oldest: oldest.to_string(),
        };
    }
    Compatibility::Compatible
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_version_is_the_stamped_one() {
        assert_eq!(current(), env!("CARGO_PKG_VERSION"));
        assert_eq!(
            parse_stamp(&STAMP),
            Some(env!("CARGO_PKG_VERSION")),
            "{STAMP:?}"
        );
    }

    fn binary_with(stamp_version: &str) -> Vec<u8> {
        let mut bytes = b"\x7fELF....code....apiary-version:not a stamp\0\0..".to_vec();
        bytes.extend_from_slice(&stamp_of(stamp_version));
        bytes.extend_from_slice(b"....more data");
        bytes
    }

    #[test]
    fn a_stamp_is_found_and_rewritten() {
        let mut bytes = binary_with("0.1.0");
        let stamp = find_stamp(&bytes).expect("stamp");
        assert_eq!(stamp.version, "0.1.0");
        let len = bytes.len();
        restamp(&mut bytes, "0.1.1-rc.1").expect("restamp");
        assert_eq!(bytes.len(), len);
        assert_eq!(find_stamp(&bytes).expect("stamp").version, "0.1.1-rc.1");
        assert_eq!(find_stamp(&bytes).expect("stamp").offset, stamp.offset);
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        assert_eq!(find_stamp(b"\x7fELF no stamp"), Err(StampError::Missing));
        let mut two = binary_with("0.1.0");
        two.extend_from_slice(&stamp_of("0.2.0"));
        assert!(matches!(
            find_stamp(&two),
            Err(StampError::Ambiguous { count: 2, .. })
        ));
        let mut bytes = binary_with("0.1.0");
        assert!(matches!(
            restamp(&mut bytes, "one point two"),
            Err(StampError::BadVersion { .. })
        ));
        let long = format!("0.1.0-{}", "x".repeat(60));
        assert!(matches!(
            restamp(&mut bytes, &long),
            Err(StampError::BadVersion { .. })
        ));
        assert_eq!(find_stamp(&bytes).expect("untouched").version, "0.1.0");
    }

    #[test]
    fn the_scanner_finds_a_stamp_across_chunks() {
        let bytes = binary_with("1.2.3");
        let want = find_stamp(&bytes).expect("stamp");
        for chunk in [1, 7, 16, 63, 64, 65, 1000] {
            let mut scanner = StampScanner::default();
            for c in bytes.chunks(chunk) {
                scanner.feed(c);
            }
            assert_eq!(scanner.finish(), Ok(want.clone()), "chunks of {chunk}");
        }
        let mut empty = StampScanner::default();
        empty.feed(b"\x7fELF nothing");
        assert_eq!(empty.finish(), Err(StampError::Missing));
    }

    #[test]
    fn compatibility_follows_the_series() {
        use Compatibility::*;
        assert_eq!(compatibility("0.1.0", "0.1.0", "0.1.0"), Compatible);
        assert_eq!(compatibility("0.1.3", "0.1.0", "0.1.1"), Compatible);
        assert_eq!(compatibility("0.1.0", "0.1.0", "0.1.5"), Compatible);
        assert_eq!(compatibility("0.1.0", "0.1.0", "0.1.0-rc.1"), Compatible);
        assert!(matches!(
            compatibility("0.2.0", "0.2.0", "0.1.9"),
            TooOld { .. }
        ));
        assert!(matches!(
            compatibility("0.1.4", "0.1.2", "0.1.1"),
            TooOld { .. }
        ));
        assert!(matches!(
            compatibility("0.1.0", "0.1.0", "0.2.0"),
            TooNew { .. }
        ));
        assert_eq!(compatibility("1.4.0", "1.0.0", "1.9.0"), Compatible);
        assert!(matches!(
            compatibility("2.0.0", "2.0.0", "1.9.0"),
            TooOld { .. }
        ));
        assert_eq!(compatibility("0.1.0", "0.1.0", "(unknown)"), Unreadable);
    }
}
