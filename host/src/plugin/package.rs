//! The crate a component was built from: `weir plugin build` appends a custom section named
//! [`SECTION`] holding `{"name": ..., "version": ...}` (the crate's), and the host reads it when it
//! loads a plugin, to show them beside the content hash.
//!
//! A component's top level is a preamble (8 bytes) and sections, each an id byte, a LEB128 size and
//! that many bytes; a custom section (id 0) is a LEB128-prefixed name and a payload. Custom sections
//! may stand anywhere and do not change what the component does, so this is done on the bytes,
//! without a Wasm library.

use serde::{Deserialize, Serialize};

/// The name of the custom section.
pub const SECTION: &str = "weir-plugin";

/// The crate a plugin was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageInfo {
    /// The crate's name, such as `my-rule`.
    pub name: String,
    /// The crate's version, such as `0.1.0`.
    pub version: String,
}

/// The package named by the component's [`SECTION`] section, if it has a readable one.
pub fn read(bytes: &[u8]) -> Option<PackageInfo> {
    sections(bytes)?
        .into_iter()
        .find_map(|section| match section {
            Section::Custom { name, payload, .. } if name == SECTION => {
                serde_json::from_slice(payload).ok()
            }
            _ => None,
        })
}

/// `bytes` with every [`SECTION`] section removed and one holding `info` appended. `None` when
/// `bytes` are not a well-formed WebAssembly binary.
pub fn embed(bytes: &[u8], info: &PackageInfo) -> Option<Vec<u8>> {
    let payload = serde_json::to_vec(info).ok()?;
    embed_section(bytes, SECTION, &payload)
}

/// `bytes` with every custom section named `section` removed and one holding `payload` appended.
/// `None` when `bytes` are not a well-formed WebAssembly binary.
pub(crate) fn embed_section(bytes: &[u8], section: &str, payload: &[u8]) -> Option<Vec<u8>> {
    let mut out = without_section(bytes, section)?;
    let mut content = Vec::new();
    leb128(&mut content, section.len());
    content.extend_from_slice(section.as_bytes());
    content.extend_from_slice(payload);
    out.push(0);
    leb128(&mut out, content.len());
    out.extend_from_slice(&content);
    Some(out)
}

/// `bytes` with every custom section named `section` removed, the rest in order. `None` when
/// `bytes` are not a well-formed WebAssembly binary.
pub(crate) fn without_section(bytes: &[u8], section: &str) -> Option<Vec<u8>> {
    let sections = sections(bytes)?;
    let mut out = bytes.get(..8)?.to_vec();
    for found in sections {
        match found {
            Section::Custom { name, .. } if name == section => {}
            Section::Custom { raw, .. } | Section::Other { raw } => out.extend_from_slice(raw),
        }
    }
    Some(out)
}

/// The payloads of the custom sections named `section`. `None` when `bytes` are not a
/// well-formed WebAssembly binary.
pub(crate) fn section_payloads<'a>(bytes: &'a [u8], section: &str) -> Option<Vec<&'a [u8]>> {
    Some(
        sections(bytes)?
            .into_iter()
            .filter_map(|found| match found {
                Section::Custom { name, payload, .. } if name == section => Some(payload),
                _ => None,
            })
            .collect(),
    )
}

/// One top-level section, with its raw bytes (id and size included).
enum Section<'a> {
    Custom {
        name: &'a str,
        payload: &'a [u8],
        raw: &'a [u8],
    },
    Other {
        raw: &'a [u8],
    },
}

/// The top-level sections of a Wasm binary (module or component), or `None` if malformed.
fn sections(bytes: &[u8]) -> Option<Vec<Section<'_>>> {
    if !bytes.starts_with(b"\0asm") || bytes.len() < 8 {
        return None;
    }
    let mut sections = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let start = at;
        let id = bytes[at];
        at += 1;
        let size = read_leb128(bytes, &mut at)?;
        let end = at.checked_add(size)?;
        let content = bytes.get(at..end)?;
        let raw = bytes.get(start..end)?;
        if id == 0 {
            let mut name_at = 0;
            let name_len = read_leb128(content, &mut name_at)?;
            let name_end = name_at.checked_add(name_len)?;
            let name = std::str::from_utf8(content.get(name_at..name_end)?).ok()?;
            sections.push(Section::Custom {
                name,
                payload: content.get(name_end..)?,
                raw,
            });
        } else {
            sections.push(Section::Other { raw });
        }
        at = end;
    }
    Some(sections)
}

/// Reads an unsigned LEB128 number (at most 32 bits) at `*at`, moving `*at` past it.
fn read_leb128(bytes: &[u8], at: &mut usize) -> Option<usize> {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return usize::try_from(value).ok();
        }
    }
    None
}

/// Appends `value` as unsigned LEB128.
fn leb128(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(version: &str) -> PackageInfo {
        PackageInfo {
            name: "my-rule".into(),
            version: version.into(),
        }
    }

    #[test]
    fn a_section_appended_to_a_component_reads_back_and_replaces_an_older_one() {
        // A component with an empty custom section of another name: the preamble of a component.
        let mut component = b"\0asm\x0d\x00\x01\x00".to_vec();
        component.extend_from_slice(&[0, 4, 3, b'a', b'b', b'c']);
        assert_eq!(read(&component), None);
        let once = embed(&component, &info("0.1.0")).expect("well-formed");
        assert_eq!(read(&once), Some(info("0.1.0")));
        assert!(once.starts_with(&component), "other sections are kept");
        let twice = embed(&once, &info("0.2.0")).expect("well-formed");
        assert_eq!(read(&twice), Some(info("0.2.0")));
        assert_eq!(twice.len(), once.len(), "the older section is replaced");
    }

    #[test]
    fn a_long_payload_has_a_multi_byte_size_and_a_component_still_compiles_with_it() {
        let long = info(&"9".repeat(300));
        let engine = wasmtime::Engine::default();
        // (component) in binary: the preamble alone.
        let bytes = b"\0asm\x0d\x00\x01\x00".to_vec();
        let embedded = embed(&bytes, &long).expect("well-formed");
        assert_eq!(read(&embedded), Some(long));
        wasmtime::component::Component::new(&engine, &embedded)
            .expect("a custom section leaves the component valid");
        assert_eq!(embed(b"not wasm", &info("1")), None);
        assert_eq!(read(&embedded[..embedded.len() - 1]), None);
    }
}
