//! Can this kernel carry an encrypted overlay?
//!
//! Docker encrypts overlay traffic with IPsec ESP in transport mode, keyed
//! through xfrm netlink, with `rfc4106(gcm(aes))`. On a kernel without one of
//! those, `docker network create --opt encrypted` still succeeds, and the
//! network then silently drops every packet (seen on the lab's kernel, which
//! lacks ESP and GCM). So apiary refuses first and names what is missing.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::facts::feature;

/// What the kernel exposes about the pieces an encrypted overlay needs, read
/// under a root prefix (`/` on a real host) so it can be tested on fixtures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelCrypto {
    /// The text of /proc/config.gz, if the kernel exposes it.
    pub config: Option<String>,
    /// Modules of interest present under /sys/module.
    pub loaded: BTreeSet<String>,
    /// modules.builtin and modules.dep of the running kernel, joined.
    pub module_lists: String,
    /// /proc/crypto: the algorithms the kernel has registered.
    pub proc_crypto: Option<String>,
}

/// One piece: what it is called, its module and its kernel config symbol.
const PIECES: [(&str, &str, &str); 3] = [
    ("ESP (esp4)", "esp4", "CONFIG_INET_ESP"),
    ("xfrm (xfrm_user)", "xfrm_user", "CONFIG_XFRM_USER"),
    ("AES-GCM (gcm)", "gcm", "CONFIG_CRYPTO_GCM"),
];

impl KernelCrypto {
    pub fn read(root: &Path) -> KernelCrypto {
        let config = std::fs::File::open(root.join("proc/config.gz"))
            .ok()
            .and_then(|f| {
                let mut text = String::new();
                flate2::read::GzDecoder::new(f)
                    .read_to_string(&mut text)
                    .ok()
                    .map(|_| text)
            });
        let loaded = PIECES
            .iter()
            .map(|(_, module, _)| *module)
            .filter(|m| root.join("sys/module").join(m).exists())
            .map(str::to_string)
            .collect();
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let module_lists = ["modules.builtin", "modules.dep"]
            .iter()
            .filter_map(|f| {
                std::fs::read_to_string(root.join("lib/modules").join(&release).join(f)).ok()
            })
            .collect::<Vec<_>>()
            .join("\n");
        KernelCrypto {
            config,
            loaded,
            module_lists,
            proc_crypto: std::fs::read_to_string(root.join("proc/crypto")).ok(),
        }
    }

    fn registers(&self, algorithm: &str) -> bool {
        self.proc_crypto.as_deref().is_some_and(|t| {
            t.lines().any(|l| {
                l.split_once(':')
                    .is_some_and(|(k, v)| k.trim() == "name" && v.trim() == algorithm)
            })
        })
    }
}

/// A piece the kernel lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingPiece {
    /// e.g. "ESP (esp4)".
    pub piece: String,
    /// The kernel config symbol that provides it.
    pub symbol: String,
    /// What was found, as advice.
    pub detail: String,
}

/// The refusal of an encrypted overlay on `host`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct Missing {
    pub host: String,
    pub pieces: Vec<MissingPiece>,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .pieces
            .iter()
            .map(|p| format!("{} ({})", p.piece, p.symbol))
            .collect();
        write!(
            f,
            "encrypted overlay refused: the kernel of {} lacks {}; Docker would create the network and then silently drop all of its traffic. \
             Use a kernel built with {}, or an unencrypted overlay",
            self.host,
            names.join(", "),
            self.pieces
                .iter()
                .map(|p| p.symbol.as_str())
                .collect::<Vec<_>>()
                .join(" and ")
        )
    }
}

/// Whether `host`'s kernel can carry an encrypted overlay; if not, which
/// pieces are missing. A piece counts when its module is loaded, built in,
/// available as a module, or (for GCM) its algorithm is registered.
pub fn encryption_support(host: &str, k: &KernelCrypto) -> Result<(), Missing> {
    let known = k.config.is_some() || !k.module_lists.is_empty();
    let mut pieces = Vec::new();
    for (piece, module, symbol) in PIECES {
        let f = feature(
            module,
            symbol,
            k.loaded.contains(module),
            k.config.as_deref(),
            &k.module_lists,
        );
        let registered =
            module == "gcm" && (k.registers("gcm(aes)") || k.registers("rfc4106(gcm(aes))"));
        if f.available || registered {
            continue;
        }
        let detail = if known {
            f.detail
        } else {
            format!(
                "cannot tell: neither /proc/config.gz nor the module lists are readable; `modprobe {module}` would prove it present"
            )
        };
        pieces.push(MissingPiece {
            piece: piece.to_string(),
            symbol: symbol.to_string(),
            detail,
        });
    }
    if pieces.is_empty() {
        Ok(())
    } else {
        Err(Missing {
            host: host.to_string(),
            pieces,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const LAB_CONFIG: &str = "CONFIG_XFRM=y\nCONFIG_XFRM_USER=y\n# CONFIG_INET_ESP is not set\n\
                              CONFIG_CRYPTO_AES=y\n# CONFIG_CRYPTO_GCM is not set\n";

    #[test]
    fn lab_kernel_lacks_esp_and_gcm() {
        let k = KernelCrypto {
            config: Some(LAB_CONFIG.into()),
            proc_crypto: Some("name         : aes\nname         : cbc(aes)\n".into()),
            ..Default::default()
        };
        let m = encryption_support("workerbee-1", &k).expect_err("refused");
        let names: Vec<&str> = m.pieces.iter().map(|p| p.piece.as_str()).collect();
        assert_eq!(names, ["ESP (esp4)", "AES-GCM (gcm)"]);
        let text = m.to_string();
        assert!(text.contains("workerbee-1"), "{text}");
        assert!(
            text.contains("CONFIG_INET_ESP") && text.contains("CONFIG_CRYPTO_GCM"),
            "{text}"
        );
        assert!(text.contains("silently drop"), "{text}");
    }

    #[test]
    fn complete_kernels_pass_by_config_module_or_registration() {
        let y = "CONFIG_INET_ESP=m\nCONFIG_XFRM_USER=y\nCONFIG_CRYPTO_GCM=m\n";
        assert_eq!(
            encryption_support(
                "h",
                &KernelCrypto {
                    config: Some(y.into()),
                    ..Default::default()
                }
            ),
            Ok(())
        );
        // no config: loaded modules and /proc/crypto are enough
        let k = KernelCrypto {
            loaded: ["esp4", "xfrm_user"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            proc_crypto: Some("name         : rfc4106(gcm(aes))\ndriver : x\n".into()),
            ..Default::default()
        };
        assert_eq!(encryption_support("h", &k), Ok(()));
        // module lists of the running kernel
        let k = KernelCrypto {
            module_lists: "kernel/net/ipv4/esp4.ko: kernel/net/xfrm/xfrm_algo.ko\n\
                           kernel/net/xfrm/xfrm_user.ko:\nkernel/crypto/gcm.ko:\n"
                .into(),
            ..Default::default()
        };
        assert_eq!(encryption_support("h", &k), Ok(()));
    }

    #[test]
    fn nothing_readable_is_refused_as_unknown() {
        let m = encryption_support("h", &KernelCrypto::default()).expect_err("refused");
        assert_eq!(m.pieces.len(), 3);
        assert!(m.pieces[0].detail.starts_with("cannot tell"));
    }

    #[test]
    fn reads_through_a_root_prefix() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("proc")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("sys/module/esp4")).expect("mkdir");
        let gz = std::fs::File::create(dir.path().join("proc/config.gz")).expect("create");
        let mut enc = flate2::write::GzEncoder::new(gz, flate2::Compression::fast());
        enc.write_all(LAB_CONFIG.as_bytes()).expect("write");
        enc.finish().expect("finish");
        std::fs::write(dir.path().join("proc/crypto"), "name         : gcm(aes)\n").expect("write");
        let k = KernelCrypto::read(dir.path());
        assert!(k.loaded.contains("esp4"));
        assert_eq!(k.config.as_deref(), Some(LAB_CONFIG));
        // esp4 loaded, xfrm built in, gcm(aes) registered
        assert_eq!(encryption_support("h", &k), Ok(()));
    }

    #[test]
    fn this_machine_is_refused_when_it_lacks_esp() {
        // The lab's kernel: the refusal must name ESP. Skipped where the kernel has it.
        let k = KernelCrypto::read(Path::new("/"));
        let esp = k
            .config
            .as_deref()
            .is_some_and(|c| c.contains("# CONFIG_INET_ESP is not set"));
        if esp && !k.loaded.contains("esp4") {
            let m = encryption_support("this-host", &k).expect_err("refused");
            assert!(
                m.pieces.iter().any(|p| p.symbol == "CONFIG_INET_ESP"),
                "{m}"
            );
        }
    }
}
