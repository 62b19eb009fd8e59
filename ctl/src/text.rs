//! What `ctl` shows a person comes partly from hosts (facts, reasons,
//! events naming them), and a compromised host must not be able to drive
//! the operator's terminal: ESC and BEL sequences, a carriage return that
//! rewrites a line, a newline that forges a table row, or a bidi override
//! that reorders what is read. [`shown`] makes such characters visible
//! escapes; `--json` output is left exact (JSON escapes them itself).

use std::fmt::Write;

/// Whether `c` could change how a terminal shows what follows.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
}

/// `s` with every control or bidi character written as an escape
/// (`\n`, `\r`, `\t`, `\x1b`, `\u{202e}`).
pub fn shown(s: &str) -> String {
    if !s.chars().any(unsafe_char) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_sequences_become_visible_escapes() {
        assert_eq!(shown("queenbee"), "queenbee");
        assert_eq!(shown("6.1.0 ünïcode"), "6.1.0 ünïcode");
        assert_eq!(shown("\x1b]0;owned\x07"), "\\x1b]0;owned\\x07");
        assert_eq!(
            shown("10.0.0.1\r\nfake-node  ready"),
            "10.0.0.1\\r\\nfake-node  ready"
        );
        assert_eq!(shown("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(shown("\u{9b}31m"), "\\x9b31m", "C1 CSI");
        assert!(!shown("\x1b[2J\x07\r\n\t\x7f").chars().any(unsafe_char));
    }
}
