//! The one tar layout a bundle may have, shared by the writer and the verifying reader: each
//! entry is one plain ustar header (regular file, mode 0644 or 0755, owner 0:0 with empty
//! owner names, mtime the bundle's, no link, no device, no extension headers) followed by its
//! data padded with zeros to 512 bytes; after the last entry come two zero blocks and nothing
//! else. The reader rebuilds the header it expects for each entry and compares all 512
//! bytes, so nothing that `tar -x` takes from a header can differ from what `bundle.json` says.

/// Size of a tar block.
pub const BLOCK: usize = 512;
/// The end-of-archive marker: two zero blocks.
pub const END_MARKER: usize = 2 * BLOCK;

/// The exact header of an entry, or why the path cannot be one (longer than ustar's
/// 100-byte name plus 155-byte prefix allow, or not splittable at a `/`).
pub fn entry_header(
    path: &str,
    size: u64,
    executable: bool,
    mtime: u64,
) -> Result<[u8; BLOCK], String> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)
        .map_err(|e| format!("{path:?} cannot be a bundle entry name: {e}"))?;
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(if executable { 0o755 } else { 0o644 });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_cksum();
    let mut out = [0u8; BLOCK];
    out.copy_from_slice(h.as_bytes());
    Ok(out)
}

/// Zero bytes that follow `size` bytes of data up to the next block.
pub fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// Fields of a ustar header: name, byte range, whether it is an octal number.
const FIELDS: [(&str, usize, usize, bool); 17] = [
    ("name", 0, 100, false),
    ("mode", 100, 108, true),
    ("uid", 108, 116, true),
    ("gid", 116, 124, true),
    ("size", 124, 136, true),
    ("mtime", 136, 148, true),
    ("checksum", 148, 156, false),
    ("type", 156, 157, false),
    ("link name", 157, 257, false),
    ("magic", 257, 263, false),
    ("version", 263, 265, false),
    ("owner name", 265, 297, false),
    ("group name", 297, 329, false),
    ("device major", 329, 337, false),
    ("device minor", 337, 345, false),
    ("prefix", 345, 500, false),
    ("padding", 500, 512, false),
];

fn show(bytes: &[u8], octal: bool) -> String {
    let text: Vec<u8> = bytes.iter().copied().take_while(|b| *b != 0).collect();
    if octal {
        let t = String::from_utf8_lossy(&text).trim().to_string();
        format!("0{}", t.trim_start_matches('0'))
    } else {
        format!("{:?}", String::from_utf8_lossy(&text))
    }
}

/// The first field where two headers differ, as `(field, found, expected)`. The checksum is
/// compared last, so a header whose other fields were changed and checksum fixed names the
/// changed field.
pub fn difference(found: &[u8; BLOCK], expected: &[u8; BLOCK]) -> Option<(String, String, String)> {
    let ordered = FIELDS
        .iter()
        .filter(|f| f.0 != "checksum")
        .chain(FIELDS.iter().filter(|f| f.0 == "checksum"));
    for (name, a, b, octal) in ordered {
        if found[*a..*b] != expected[*a..*b] {
            let (f, e) = (&found[*a..*b], &expected[*a..*b]);
            let (mut fs, mut es) = (show(f, *octal), show(e, *octal));
            if fs == es {
                // same text, different bytes (spaces, NUL padding, trailing garbage)
                fs = format!("bytes {}", hex::encode(f));
                es = format!("bytes {}", hex::encode(e));
            }
            return Some((name.to_string(), fs, es));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_what_tar_writes_and_differences_are_named() {
        let h = entry_header("bin/x", 10, true, 1_700_000_000).unwrap();
        let parsed = tar::Header::from_byte_slice(&h);
        assert_eq!(parsed.mode().unwrap(), 0o755);
        assert_eq!(parsed.size().unwrap(), 10);
        assert_eq!(&*parsed.path_bytes(), b"bin/x");
        assert_eq!(difference(&h, &h), None);

        let mut setuid = tar::Header::from_byte_slice(&h).clone();
        setuid.set_mode(0o4755);
        setuid.set_cksum();
        let mut found = [0u8; BLOCK];
        found.copy_from_slice(setuid.as_bytes());
        assert_eq!(
            difference(&found, &h),
            Some(("mode".into(), "04755".into(), "0755".into()))
        );

        let mut owner = tar::Header::from_byte_slice(&h).clone();
        owner.set_username("bin").unwrap();
        owner.set_cksum();
        found.copy_from_slice(owner.as_bytes());
        assert_eq!(
            difference(&found, &h),
            Some(("owner name".into(), "\"bin\"".into(), "\"\"".into()))
        );

        let mut sum = h;
        sum[150] ^= 1;
        assert_eq!(difference(&sum, &h).unwrap().0, "checksum");

        // 81-byte blob paths fit the name field; longer ones use the ustar prefix
        let long = format!("configs/{}/{}", "d".repeat(120), "f".repeat(90));
        let h = entry_header(&long, 1, false, 0).unwrap();
        assert_eq!(
            &*tar::Header::from_byte_slice(&h).path_bytes(),
            long.as_bytes()
        );
        assert!(entry_header(&"x".repeat(300), 1, false, 0).is_err());
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
    }
}
