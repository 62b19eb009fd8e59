//! The mutator: seeded, so a run is repeated exactly by its seed. Havoc
//! style (AFL's): each new input is a corpus entry with one to eight
//! mutations stacked, from byte-level ones that suit binary formats
//! (protobuf, DER, tunnel frames) to token-level ones that suit text
//! (TOML, JSON, etcdctl output): the format's keywords from the target's
//! dictionary, and numbers replaced with boundary values.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Tokens worth trying in any text format: numeric boundaries (the
/// overflows, the signs, the floats serde and `parse` refuse or accept),
/// JSON's and TOML's punctuation, and nulls.
const COMMON: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e999",
    "-0",
    "0.5",
    "NaN",
    "inf",
    "null",
    "true",
    "false",
    "\"\"",
    "[]",
    "{}",
    "[[",
    "{\"\":",
    "\\u0000",
    "\\ud800",
    "=",
    "\n",
    "\r\n",
    "\0",
    " ",
    ",",
    ":",
    "/",
    "-",
    ".",
    "\u{202e}",
    "\u{1b}[2J",
];

/// Bytes that sit on a boundary: zero, sign bits, all ones.
const INTERESTING_BYTES: [u8; 9] = [0, 1, 0x7f, 0x80, 0xff, 0x20, b'\n', b'"', b'0'];

/// Integers that sit on a boundary, written in binary (lengths, counts,
/// varints in binary formats).
const INTERESTING_INTS: [u64; 10] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// Makes new inputs from a corpus.
pub struct Mutator {
    rng: StdRng,
    dict: Vec<Vec<u8>>,
    max_len: usize,
}

impl Mutator {
    /// A mutator seeded with `seed`; `dict` are the target's own tokens
    /// (added to the common ones); inputs never grow past `max_len`.
    pub fn new(seed: u64, dict: &[&str], max_len: usize) -> Self {
        let dict = COMMON
            .iter()
            .chain(dict)
            .map(|t| t.as_bytes().to_vec())
            .collect();
        Mutator {
            rng: StdRng::seed_from_u64(seed),
            dict,
            max_len: max_len.max(16),
        }
    }

    /// A number below `n` (which must be above 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }

    /// A new input from `corpus[i]`, with a few mutations stacked;
    /// `corpus` supplies the other half of a splice.
    pub fn mutate(&mut self, corpus: &[Vec<u8>], i: usize) -> Vec<u8> {
        let mut data = corpus[i].clone();
        let stack = 1 << self.below(4);
        for _ in 0..stack {
            self.one(&mut data, corpus);
        }
        data.truncate(self.max_len);
        data
    }

    fn one(&mut self, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        match self.below(16) {
            0 => self.flip_bit(data),
            1 => self.set_byte(data, None),
            2 => {
                let b = INTERESTING_BYTES[self.below(INTERESTING_BYTES.len())];
                self.set_byte(data, Some(b))
            }
            3 => self.insert_bytes(data),
            4 | 5 => self.delete(data),
            6 => self.duplicate(data),
            7 => self.splice(data, corpus),
            8 => self.truncate(data),
            9 => self.append_run(data),
            10 | 11 => self.dict_insert(data),
            12 => self.dict_overwrite(data),
            13 | 14 => self.number(data),
            _ => self.binary_int(data),
        }
    }

    fn pos(&mut self, data: &[u8]) -> usize {
        self.below(data.len() + 1)
    }

    fn flip_bit(&mut self, data: &mut [u8]) {
        if !data.is_empty() {
            let i = self.below(data.len());
            data[i] ^= 1 << self.below(8);
        }
    }

    fn set_byte(&mut self, data: &mut [u8], value: Option<u8>) {
        if !data.is_empty() {
            let i = self.below(data.len());
            data[i] = value.unwrap_or_else(|| self.rng.random());
        }
    }

    fn insert_bytes(&mut self, data: &mut Vec<u8>) {
        let at = self.pos(data);
        let n = 1 + self.below(8);
        let bytes: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
        data.splice(at..at, bytes);
    }

    fn range(&mut self, len: usize) -> (usize, usize) {
        let start = self.below(len + 1);
        let max = (len - start).min(1 << (1 + self.below(10)));
        (start, start + self.below(max + 1))
    }

    fn delete(&mut self, data: &mut Vec<u8>) {
        let (a, b) = self.range(data.len());
        data.drain(a..b);
    }

    fn duplicate(&mut self, data: &mut Vec<u8>) {
        let (a, b) = self.range(data.len());
        let chunk = data[a..b].to_vec();
        let at = self.pos(data);
        data.splice(at..at, chunk);
    }

    /// Another entry's bytes: its tail after a prefix of this one, or a
    /// piece of it inserted here.
    fn splice(&mut self, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        let other = &corpus[self.below(corpus.len())];
        if self.rng.random() {
            let cut = self.pos(data);
            let from = self.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        } else {
            let (a, b) = self.range(other.len());
            let at = self.pos(data);
            data.splice(at..at, other[a..b].iter().copied());
        }
    }

    fn truncate(&mut self, data: &mut Vec<u8>) {
        let at = self.pos(data);
        data.truncate(at);
    }

    /// A long run of one byte, or of a chunk of the input (deep nesting,
    /// huge pages, long lines).
    fn append_run(&mut self, data: &mut Vec<u8>) {
        let room = self.max_len.saturating_sub(data.len());
        if room == 0 {
            return;
        }
        let unit = if data.is_empty() || self.rng.random() {
            vec![if self.rng.random() {
                self.rng.random()
            } else {
                b"[{\"a0 \n"[self.below(7)]
            }]
        } else {
            let (a, b) = self.range(data.len());
            let b = b.max(a + 1).min(data.len());
            data[a..b].to_vec()
        };
        let times = (1 << self.below(13)).min(room / unit.len().max(1));
        let at = if self.rng.random() {
            data.len()
        } else {
            self.pos(data)
        };
        let run: Vec<u8> = unit
            .iter()
            .copied()
            .cycle()
            .take(unit.len() * times)
            .collect();
        data.splice(at..at, run);
    }

    fn token(&mut self) -> Vec<u8> {
        let i = self.below(self.dict.len());
        self.dict[i].clone()
    }

    fn dict_insert(&mut self, data: &mut Vec<u8>) {
        let t = self.token();
        let at = self.pos(data);
        data.splice(at..at, t);
    }

    fn dict_overwrite(&mut self, data: &mut Vec<u8>) {
        let t = self.token();
        let at = self.pos(data);
        let end = (at + t.len()).min(data.len());
        data.splice(at..end, t);
    }

    /// Replaces a run of ASCII digits with a boundary number or a
    /// neighbour of it.
    fn number(&mut self, data: &mut Vec<u8>) {
        let digits: Vec<usize> = (0..data.len())
            .filter(|i| data[*i].is_ascii_digit())
            .collect();
        if digits.is_empty() {
            return self.dict_insert(data);
        }
        let mut start = digits[self.below(digits.len())];
        while start > 0 && data[start - 1].is_ascii_digit() {
            start -= 1;
        }
        let mut end = start;
        while end < data.len() && data[end].is_ascii_digit() {
            end += 1;
        }
        let old: u64 = std::str::from_utf8(&data[start..end])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let new = match self.below(4) {
            0 => INTERESTING_INTS[self.below(INTERESTING_INTS.len())].to_string(),
            1 => old.wrapping_add(1 + self.below(16) as u64).to_string(),
            2 => old.wrapping_sub(1 + self.below(16) as u64).to_string(),
            _ => format!("{old}{}", "9".repeat(1 + self.below(20))),
        };
        data.splice(start..end, new.into_bytes());
    }

    /// Overwrites (or inserts) a boundary integer in binary, either byte order.
    fn binary_int(&mut self, data: &mut Vec<u8>) {
        let v = INTERESTING_INTS[self.below(INTERESTING_INTS.len())];
        let width = 1 << self.below(4);
        let bytes = if self.rng.random() {
            v.to_le_bytes()[..width].to_vec()
        } else {
            v.to_be_bytes()[8 - width..].to_vec()
        };
        let at = self.pos(data);
        let end = if self.rng.random() {
            (at + width).min(data.len())
        } else {
            at
        };
        data.splice(at..end, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_inputs() {
        let corpus = vec![b"name = \"a\"\nport = 7443\n".to_vec(), b"{}".to_vec()];
        let run = |seed| {
            let mut m = Mutator::new(seed, &["port"], 4096);
            (0..200)
                .map(|i| m.mutate(&corpus, i % 2))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert!(run(9).iter().all(|x| x.len() <= 4096));
    }
}
