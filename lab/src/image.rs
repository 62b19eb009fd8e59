//! Images without a registry: a root filesystem becomes a one-layer image in
//! `docker load` format (manifest.json, a config, and an uncompressed
//! layer.tar), written directly with `tar` and `sha2` — no engine needed to
//! build it, and the same bytes for the same inputs, so it is built once and cached.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::LabError;

/// The lab's probe and test image.
pub const BUSYBOX_IMAGE: &str = "lab/busybox:1";
/// Page that `httpd -h /var/www` serves in the busybox image.
pub const BUSYBOX_INDEX_HTML: &str = "hello-from-lab\n";
/// Bump when the layout of the busybox image changes, to invalidate caches.
const BUSYBOX_LAYOUT: u32 = 1;
/// All entries get this mtime so layers are reproducible.
const EPOCH: u64 = 0;

/// One entry of an image layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerEntry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
}

impl LayerEntry {
    pub fn path(&self) -> &str {
        match self {
            LayerEntry::Dir { path, .. }
            | LayerEntry::File { path, .. }
            | LayerEntry::Symlink { path, .. } => path,
        }
    }
}

/// What the image runs by default.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ImageConfig {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub working_dir: Option<String>,
}

/// A built archive and what loading it yields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageArchive {
    /// The `docker load` tarball.
    pub path: PathBuf,
    /// Tag it carries, e.g. `lab/busybox:1`.
    pub reference: String,
    /// Image id after loading: `sha256:<digest of the config>`.
    pub id: String,
}

/// `docker load` expects the Go architecture name.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Adds the parent directories every entry needs, sorts, and writes an
/// uncompressed, reproducible layer tar.
pub fn layer_tar(entries: &[LayerEntry]) -> io::Result<Vec<u8>> {
    let mut entries: Vec<LayerEntry> = entries.to_vec();
    let present: BTreeSet<String> = entries.iter().map(|e| e.path().to_string()).collect();
    let mut parents = BTreeSet::new();
    for e in &entries {
        let mut p = Path::new(e.path()).parent();
        while let Some(dir) = p {
            let s = dir.to_string_lossy().to_string();
            if s.is_empty() {
                break;
            }
            if !present.contains(&s) {
                parents.insert(s);
            }
            p = dir.parent();
        }
    }
    entries.extend(
        parents
            .into_iter()
            .map(|path| LayerEntry::Dir { path, mode: 0o755 }),
    );
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    entries.dedup_by(|a, b| a.path() == b.path());

    let mut builder = tar::Builder::new(Vec::new());
    for e in &entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(EPOCH);
        match e {
            LayerEntry::Dir { path, mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                builder.append_data(&mut h, format!("{path}/"), io::empty())?;
            }
            LayerEntry::File { path, mode, data } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                builder.append_data(&mut h, path, data.as_slice())?;
            }
            LayerEntry::Symlink { path, target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                builder.append_link(&mut h, path, target)?;
            }
        }
    }
    builder.into_inner()
}

#[derive(Serialize)]
struct ManifestEntry<'a> {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<&'a str>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct ImageJson {
    architecture: String,
    os: String,
    created: String,
    config: ContainerConfig,
    rootfs: RootFs,
    history: Vec<History>,
}

#[derive(Serialize, Deserialize)]
struct ContainerConfig {
    #[serde(rename = "Env", skip_serializing_if = "Vec::is_empty", default)]
    env: Vec<String>,
    #[serde(rename = "Cmd", skip_serializing_if = "Vec::is_empty", default)]
    cmd: Vec<String>,
    #[serde(rename = "Entrypoint", skip_serializing_if = "Vec::is_empty", default)]
    entrypoint: Vec<String>,
    #[serde(
        rename = "WorkingDir",
        skip_serializing_if = "Option::is_none",
        default
    )]
    working_dir: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct History {
    created: String,
    created_by: String,
}

/// Writes a `docker load` archive of one layer to `out` and returns the image id.
pub fn write_image_archive<W: Write>(
    reference: &str,
    config: &ImageConfig,
    layer: &[u8],
    out: W,
) -> io::Result<String> {
    let layer_hex = sha256_hex(layer);
    let image = ImageJson {
        architecture: go_arch().to_string(),
        os: "linux".to_string(),
        created: "1970-01-01T00:00:00Z".to_string(),
        config: ContainerConfig {
            env: config.env.clone(),
            cmd: config.cmd.clone(),
            entrypoint: config.entrypoint.clone(),
            working_dir: config.working_dir.clone(),
        },
        rootfs: RootFs {
            kind: "layers".to_string(),
            diff_ids: vec![format!("sha256:{layer_hex}")],
        },
        history: vec![History {
            created: "1970-01-01T00:00:00Z".to_string(),
            created_by: "apiary-lab rootfs layer".to_string(),
        }],
    };
    let config_bytes = serde_json::to_vec(&image).map_err(io::Error::other)?;
    let config_hex = sha256_hex(&config_bytes);
    let layer_path = format!("{layer_hex}/layer.tar");
    let manifest = serde_json::to_vec(&[ManifestEntry {
        config: format!("{config_hex}.json"),
        repo_tags: vec![reference],
        layers: vec![layer_path.clone()],
    }])
    .map_err(io::Error::other)?;

    let mut b = tar::Builder::new(out);
    let file = |b: &mut tar::Builder<W>, path: &str, data: &[u8]| -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(EPOCH);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data)
    };
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_mtime(EPOCH);
    dir.set_size(0);
    b.append_data(&mut dir, format!("{layer_hex}/"), io::empty())?;
    file(&mut b, &format!("{layer_hex}/VERSION"), b"1.0")?;
    file(&mut b, &layer_path, layer)?;
    file(&mut b, &format!("{config_hex}.json"), &config_bytes)?;
    file(&mut b, "manifest.json", &manifest)?;
    b.into_inner()?.flush()?;
    Ok(format!("sha256:{config_hex}"))
}

/// Whether an ELF file has no program interpreter (is statically linked).
pub fn elf_is_static(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false; // only 64-bit little-endian is handled; anything else is refused
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let rd = |o: usize, n: usize| bytes.get(o..o + n);
    let Some(phoff) =
        rd(0x20, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
    else {
        return false;
    };
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        rd(o, 4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4]))) != Some(PT_INTERP)
    })
}

/// The busybox-static root filesystem: the binary, one symlink per applet
/// (`applets` is the output of `busybox --list-full`), a root user and a page
/// for `httpd -h /var/www`.
pub fn busybox_entries(busybox: Vec<u8>, applets: &str) -> Vec<LayerEntry> {
    let mut e = vec![
        LayerEntry::File {
            path: "bin/busybox".into(),
            mode: 0o755,
            data: busybox,
        },
        LayerEntry::File {
            path: "etc/passwd".into(),
            mode: 0o644,
            data: b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n".to_vec(),
        },
        LayerEntry::File {
            path: "etc/group".into(),
            mode: 0o644,
            data: b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
        },
        LayerEntry::File {
            path: "var/www/index.html".into(),
            mode: 0o644,
            data: BUSYBOX_INDEX_HTML.as_bytes().to_vec(),
        },
        LayerEntry::Dir { path: "tmp".into(), mode: 0o1777 },
    ];
    for d in [
        "dev", "proc", "sys", "root", "etc", "usr/bin", "usr/sbin", "sbin", "var/lib",
    ] {
        e.push(LayerEntry::Dir {
            path: d.into(),
            mode: 0o755,
        });
    }
    for a in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        let a = a.trim_start_matches('/');
        // applet paths come from the busybox binary; keep only plain relative ones
        if a == "bin/busybox" || a.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            continue;
        }
        e.push(LayerEntry::Symlink {
            path: a.to_string(),
            target: "/bin/busybox".into(),
        });
    }
    e
}

/// Configuration of the busybox image: `sh` by default.
pub fn busybox_config() -> ImageConfig {
    ImageConfig {
        cmd: vec!["/bin/sh".into()],
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        ..ImageConfig::default()
    }
}

/// Cache file name for the busybox image built from a binary with this content.
pub fn busybox_cache_name(busybox: &[u8]) -> String {
    let key = sha256_hex(&[busybox, format!("layout={BUSYBOX_LAYOUT}").as_bytes()].concat());
    format!("lab-busybox-1-{}.tar", &key[..16])
}

/// Builds (or finds in `cache_dir`) the busybox archive. `applets` is asked
/// for only when a build is needed.
pub fn ensure_busybox_archive(
    busybox_path: &Path,
    cache_dir: &Path,
    applets: impl FnOnce() -> Result<String, LabError>,
) -> Result<ImageArchive, LabError> {
    let mut bin = Vec::new();
    std::fs::File::open(busybox_path)
        .and_then(|mut f| f.read_to_end(&mut bin))
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                LabError::ToolMissing {
                    tool: busybox_path.display().to_string(),
                    package: "busybox-static",
                }
            } else {
                LabError::io("read", busybox_path, e)
            }
        })?;
    if !elf_is_static(&bin) {
        return Err(LabError::BusyboxNotStatic {
            path: busybox_path.to_path_buf(),
        });
    }
    let path = cache_dir.join(busybox_cache_name(&bin));
    let id_path = path.with_extension("id");
    if let (true, Ok(id)) = (path.is_file(), std::fs::read_to_string(&id_path)) {
        return Ok(ImageArchive {
            path,
            reference: BUSYBOX_IMAGE.to_string(),
            id: id.trim().to_string(),
        });
    }
    let applets = applets()?;
    let layer = layer_tar(&busybox_entries(bin, &applets))
        .map_err(|e| LabError::io("build layer for", &path, e))?;
    std::fs::create_dir_all(cache_dir).map_err(|e| LabError::io("create", cache_dir, e))?;
    // write next to the target and rename, so a concurrent reader never sees half a file
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let f = std::fs::File::create(&tmp).map_err(|e| LabError::io("create", &tmp, e))?;
    let id = write_image_archive(
        BUSYBOX_IMAGE,
        &busybox_config(),
        &layer,
        io::BufWriter::new(f),
    )
    .map_err(|e| LabError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| LabError::io("rename into", &path, e))?;
    std::fs::write(&id_path, &id).map_err(|e| LabError::io("write", &id_path, e))?;
    Ok(ImageArchive {
        path,
        reference: BUSYBOX_IMAGE.to_string(),
        id,
    })
}

/// The lab's etcd image: busybox plus Debian's etcd and etcdctl and the
/// shared libraries they link (the binaries are dynamically linked).
pub const ETCD_IMAGE: &str = "lab/etcd:1";
/// Bump when the layout of the etcd image changes, to invalidate caches.
const ETCD_LAYOUT: u32 = 1;

/// The etcd root filesystem: busybox's (a shell and `nc` for debugging)
/// plus `files`, each `(path inside the image, content)`, executable.
pub fn etcd_entries(
    busybox: Vec<u8>,
    applets: &str,
    files: Vec<(String, Vec<u8>)>,
) -> Vec<LayerEntry> {
    let mut e = busybox_entries(busybox, applets);
    e.push(LayerEntry::Dir {
        path: "var/lib/etcd".into(),
        mode: 0o700,
    });
    for (path, data) in files {
        let path = path.trim_start_matches('/').to_string();
        e.retain(|x| x.path() != path);
        e.push(LayerEntry::File {
            path,
            mode: 0o755,
            data,
        });
    }
    e
}

/// Configuration of the etcd image: etcd by default, etcdctl speaking v3.
pub fn etcd_config() -> ImageConfig {
    ImageConfig {
        cmd: vec!["/usr/bin/etcd".into()],
        env: vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "ETCDCTL_API=3".into(),
        ],
        ..ImageConfig::default()
    }
}

/// Builds (or finds in `cache_dir`) the etcd archive from busybox and
/// `files` (`(path inside the image, file on this machine)`): etcd, etcdctl
/// and their libraries. The cache key covers every input's content.
pub fn ensure_etcd_archive(
    busybox_path: &Path,
    cache_dir: &Path,
    files: &[(String, PathBuf)],
    applets: impl FnOnce() -> Result<String, LabError>,
) -> Result<ImageArchive, LabError> {
    let read = |p: &Path| -> Result<Vec<u8>, LabError> {
        std::fs::read(p).map_err(|e| LabError::io("read", p, e))
    };
    let bin = read(busybox_path)?;
    if !elf_is_static(&bin) {
        return Err(LabError::BusyboxNotStatic {
            path: busybox_path.to_path_buf(),
        });
    }
    let mut contents = Vec::new();
    let mut h = Sha256::new();
    h.update(format!("layout={ETCD_LAYOUT}"));
    h.update(&bin);
    for (dest, src) in files {
        let data = read(src)?;
        h.update(dest.as_bytes());
        h.update((data.len() as u64).to_le_bytes());
        h.update(&data);
        contents.push((dest.clone(), data));
    }
    let key = hex::encode(h.finalize());
    let path = cache_dir.join(format!("lab-etcd-1-{}.tar", &key[..16]));
    let id_path = path.with_extension("id");
    if let (true, Ok(id)) = (path.is_file(), std::fs::read_to_string(&id_path)) {
        return Ok(ImageArchive {
            path,
            reference: ETCD_IMAGE.to_string(),
            id: id.trim().to_string(),
        });
    }
    let applets = applets()?;
    let layer = layer_tar(&etcd_entries(bin, &applets, contents))
        .map_err(|e| LabError::io("build layer for", &path, e))?;
    std::fs::create_dir_all(cache_dir).map_err(|e| LabError::io("create", cache_dir, e))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let f = std::fs::File::create(&tmp).map_err(|e| LabError::io("create", &tmp, e))?;
    let id = write_image_archive(ETCD_IMAGE, &etcd_config(), &layer, io::BufWriter::new(f))
        .map_err(|e| LabError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| LabError::io("rename into", &path, e))?;
    std::fs::write(&id_path, &id).map_err(|e| LabError::io("write", &id_path, e))?;
    Ok(ImageArchive {
        path,
        reference: ETCD_IMAGE.to_string(),
        id,
    })
}

/// What a `docker save` archive (a user-supplied image, e.g. RethinkDB's)
/// yields when loaded: its first tag and its image id, read from its
/// `manifest.json` (`<hex>.json` configs, or `blobs/sha256/<hex>` in the
/// OCI layout of newer engines).
pub fn archive_info(path: &Path) -> Result<ImageArchive, LabError> {
    let bad = |why: String| {
        LabError::io(
            "use as an image archive",
            path,
            io::Error::new(io::ErrorKind::InvalidData, why),
        )
    };
    let f = std::fs::File::open(path).map_err(|e| LabError::io("open", path, e))?;
    let mut tar = tar::Archive::new(io::BufReader::new(f));
    let entries = tar.entries().map_err(|e| LabError::io("read", path, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| LabError::io("read", path, e))?;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().trim_start_matches("./").to_string())
            .unwrap_or_default();
        if name != "manifest.json" {
            continue;
        }
        let mut text = String::new();
        entry
            .read_to_string(&mut text)
            .map_err(|e| LabError::io("read", path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| bad(format!("manifest.json is not JSON: {e}")))?;
        let first = &v[0];
        let reference = first["RepoTags"][0]
            .as_str()
            .ok_or_else(|| bad("the image in it has no tag (docker save NAME:TAG)".into()))?
            .to_string();
        let config = first["Config"].as_str().unwrap_or_default();
        let hex = config
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".json");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!(
                "unexpected config name {config:?} in manifest.json"
            )));
        }
        return Ok(ImageArchive {
            path: path.to_path_buf(),
            reference,
            id: format!("sha256:{hex}"),
        });
    }
    Err(bad("no manifest.json: not a `docker save` archive".into()))
}

/// The absolute paths of the shared objects `ldd` lists (the interpreter
/// included; the vdso, which has no file, left out).
pub fn ldd_paths(ldd_output: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in ldd_output.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/'))
            && !out.iter().any(|o| o == p)
        {
            out.push(p.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read_tar(bytes: &[u8]) -> HashMap<String, (tar::EntryType, Vec<u8>, Option<String>, u32)> {
        let mut a = tar::Archive::new(bytes);
        let mut out = HashMap::new();
        for e in a.entries().expect("entries") {
            let mut e = e.expect("entry");
            let path = e.path().expect("path").to_string_lossy().to_string();
            let kind = e.header().entry_type();
            let mode = e.header().mode().expect("mode");
            let link = e
                .link_name()
                .expect("link")
                .map(|l| l.to_string_lossy().to_string());
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read");
            out.insert(path, (kind, data, link, mode));
        }
        out
    }

    fn fake_busybox() -> Vec<u8> {
        // a 64-bit little-endian ELF header with no program headers: "static"
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b
    }

    #[test]
    fn elf_static_detection() {
        let mut b = fake_busybox();
        assert!(elf_is_static(&b));
        // one program header of type PT_INTERP at offset 64
        b.resize(64 + 56, 0);
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&3u32.to_le_bytes());
        assert!(!elf_is_static(&b));
        assert!(!elf_is_static(b"#!/bin/sh\n"));
    }

    #[test]
    fn layer_has_parents_symlinks_and_is_reproducible() {
        let entries = busybox_entries(
            b"BB".to_vec(),
            "/bin/sh\nusr/bin/wget\nbin/busybox\n../../etc/x\nsbin/ip\n",
        );
        let a = layer_tar(&entries).expect("tar");
        let b = layer_tar(&entries).expect("tar");
        assert_eq!(a, b, "same input, same bytes");
        let files = read_tar(&a);
        assert_eq!(files["bin/busybox"].1, b"BB");
        assert_eq!(files["bin/busybox"].3, 0o755);
        assert_eq!(files["bin/sh"].0, tar::EntryType::Symlink);
        assert_eq!(files["bin/sh"].2.as_deref(), Some("/bin/busybox"));
        assert_eq!(files["usr/bin/wget"].2.as_deref(), Some("/bin/busybox"));
        assert_eq!(files["usr/"].0, tar::EntryType::Directory);
        assert_eq!(files["tmp/"].3, 0o1777);
        assert_eq!(files["var/www/index.html"].1, BUSYBOX_INDEX_HTML.as_bytes());
        assert!(!files.keys().any(|k| k.contains("..")));
    }

    #[test]
    fn archive_is_in_docker_load_format() {
        let layer = layer_tar(&busybox_entries(b"BB".to_vec(), "bin/sh\n")).expect("tar");
        let mut out = Vec::new();
        let id = write_image_archive(BUSYBOX_IMAGE, &busybox_config(), &layer, &mut out)
            .expect("archive");
        let files = read_tar(&out);
        let manifest: serde_json::Value =
            serde_json::from_slice(&files["manifest.json"].1).expect("json");
        let m = &manifest[0];
        assert_eq!(m["RepoTags"][0], BUSYBOX_IMAGE);
        let config_name = m["Config"].as_str().expect("config");
        let layer_name = m["Layers"][0].as_str().expect("layer");
        // the image id is the digest of the config; the diff id the digest of the layer
        let config = &files[config_name].1;
        assert_eq!(id, format!("sha256:{}", sha256_hex(config)));
        assert_eq!(format!("{}.json", &id[7..]), config_name);
        assert_eq!(files[layer_name].1, layer);
        let c: serde_json::Value = serde_json::from_slice(config).expect("json");
        assert_eq!(
            c["rootfs"]["diff_ids"][0],
            format!("sha256:{}", sha256_hex(&layer))
        );
        assert_eq!(c["config"]["Cmd"][0], "/bin/sh");
        assert_eq!(c["os"], "linux");
    }

    #[test]
    fn busybox_archive_is_cached() {
        let dir = tempfile::tempdir().expect("tmp");
        let bb = dir.path().join("busybox");
        std::fs::write(&bb, fake_busybox()).expect("write");
        let cache = dir.path().join("cache");
        let first = ensure_busybox_archive(&bb, &cache, || Ok("bin/sh\n".into())).expect("build");
        assert!(first.path.is_file());
        let second = ensure_busybox_archive(&bb, &cache, || panic!("rebuilt")).expect("cached");
        assert_eq!(first, second);
        std::fs::write(&bb, b"#!/bin/sh\n").expect("write");
        assert!(matches!(
            ensure_busybox_archive(&bb, &cache, || Ok(String::new())),
            Err(LabError::BusyboxNotStatic { .. })
        ));
        assert!(matches!(
            ensure_busybox_archive(&dir.path().join("nope"), &cache, || Ok(String::new())),
            Err(LabError::ToolMissing {
                package: "busybox-static",
                ..
            })
        ));
    }

    #[test]
    fn ldd_output_gives_library_and_interpreter_paths() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            ldd_paths(out),
            vec![
                "/lib/x86_64-linux-gnu/libc.so.6".to_string(),
                "/lib64/ld-linux-x86-64.so.2".to_string()
            ]
        );
    }

    #[test]
    fn etcd_rootfs_has_binaries_libs_and_busybox() {
        let e = etcd_entries(
            fake_busybox(),
            "/bin/sh\n",
            vec![
                ("/usr/bin/etcd".into(), b"etcd".to_vec()),
                ("/lib64/ld-linux-x86-64.so.2".into(), b"ld".to_vec()),
            ],
        );
        let paths: Vec<&str> = e.iter().map(|x| x.path()).collect();
        for p in [
            "bin/busybox",
            "bin/sh",
            "usr/bin/etcd",
            "lib64/ld-linux-x86-64.so.2",
            "var/lib/etcd",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        assert_eq!(etcd_config().cmd, vec!["/usr/bin/etcd".to_string()]);
    }

    #[test]
    fn a_saved_archive_tells_its_tag_and_id() {
        let dir = tempfile::tempdir().expect("test archive");
        let path = dir.path().join("x.tar");
        let layer = layer_tar(&[LayerEntry::File {
            path: "a".into(),
            mode: 0o644,
            data: b"a".to_vec(),
        }])
        .expect("test archive");
        let id = write_image_archive(
            "rethinkdb:2.4",
            &ImageConfig::default(),
            &layer,
            std::fs::File::create(&path).expect("test archive"),
        )
        .expect("test archive");
        let info = archive_info(&path).expect("test archive");
        assert_eq!(info.reference, "rethinkdb:2.4");
        assert_eq!(info.id, id);
        std::fs::write(&path, b"not a tar").expect("test archive");
        assert!(archive_info(&path).is_err());
    }
}
