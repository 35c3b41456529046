//! Tensor boundaries of a safetensors file, read defensively.
//!
//! Layout: an 8-byte little-endian header length N, N bytes of JSON
//! (tensor name -> `{dtype, shape, data_offsets: [begin, end)}` relative
//! to the byte after the header, and an optional `__metadata__` map), then
//! the tensor data. Any change in the header's length moves every tensor,
//! which is why a file like this is cut where its tensors start: a tensor
//! that did not change is then stored once, wherever it moved.
//!
//! The header is only a hint: whatever it says, the cuts are positions in
//! the file, and the bytes stored are the bytes read. A header that does
//! not parse, is larger than [`MAX_HEADER`] or than the file, names a
//! tensor outside the data, or tensors that overlap, gives no hints, and
//! the file is cut by content instead (never an error).

use serde::Deserialize;

/// The largest header read (the reference implementation refuses more
/// than 100 MB; real headers are a few KiB to a few MiB).
pub const MAX_HEADER: u64 = 64 << 20;

/// Is this the start of a safetensors file of `size` bytes? Returns the
/// header length N when the first 8 bytes are a plausible one and the
/// JSON starts with `{`.
pub fn header_len(first: &[u8], size: u64) -> Option<u64> {
    let n = u64::from_le_bytes(first.get(..8)?.try_into().ok()?);
    if !(2..=MAX_HEADER).contains(&n) || n > size.saturating_sub(8) {
        return None;
    }
    (first.get(8) == Some(&b'{')).then_some(n)
}

/// One entry of the table: only `data_offsets` is read (everything else,
/// and `__metadata__`'s strings, skipped without being held).
#[derive(Deserialize)]
struct TensorInfo {
    #[serde(default)]
    data_offsets: Option<(u64, u64)>,
}

/// Where the tensors of a safetensors file start (absolute offsets in a
/// file of `size` bytes), and where its data starts, sorted; `header` is
/// the N bytes of JSON after the 8-byte length. `None` for anything that
/// is not a well-formed, non-overlapping tensor table.
pub fn tensor_starts(header: &[u8], size: u64) -> Option<Vec<u64>> {
    let data = 8u64.checked_add(header.len() as u64)?;
    if data > size {
        return None;
    }
    let table: std::collections::BTreeMap<String, TensorInfo> =
        serde_json::from_slice(header).ok()?;
    let mut spans = Vec::with_capacity(table.len());
    for (name, t) in table {
        if name == "__metadata__" {
            continue;
        }
        let (b, e) = t.data_offsets?;
        if b > e || e > size - data {
            return None;
        }
        spans.push((b, e));
    }
    spans.sort_unstable();
    let mut out = Vec::with_capacity(spans.len() + 1);
    out.push(data);
    let mut end = 0;
    for (b, e) in spans {
        if b < end {
            // Overlapping tensors: not a table a writer makes.
            return None;
        }
        end = e;
        if data + b > *out.last().unwrap_or(&0) {
            out.push(data + b);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.resize(v.len() + data, 7);
        v
    }

    #[test]
    fn tensors_start_where_the_header_says() {
        let h = r#"{"__metadata__":{"step":"3"},"b":{"dtype":"F32","shape":[4],"data_offsets":[16,32]},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let f = file(h, 32);
        let n = header_len(&f, f.len() as u64).unwrap();
        assert_eq!(n, h.len() as u64);
        let d = 8 + n;
        assert_eq!(
            tensor_starts(&f[8..8 + n as usize], f.len() as u64),
            Some(vec![d, d + 16])
        );
    }

    #[test]
    fn hostile_headers_give_no_hints() {
        // Length beyond the file, or absurd.
        let mut f = file("{}", 0);
        f[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
        assert_eq!(header_len(&f, f.len() as u64), None);
        f[..8].copy_from_slice(&100u64.to_le_bytes());
        assert_eq!(header_len(&f, f.len() as u64), None);
        // Not JSON, overlapping, outside the data, wrong types.
        for h in [
            "{nope",
            r#"{"a":{"data_offsets":[0,16]},"b":{"data_offsets":[8,24]}}"#,
            r#"{"a":{"data_offsets":[0,1000]}}"#,
            r#"{"a":{"data_offsets":[9,3]}}"#,
            r#"{"a":{"data_offsets":"x"}}"#,
            r#"[1,2]"#,
        ] {
            let f = file(h, 32);
            assert_eq!(
                tensor_starts(&f[8..8 + h.len()], f.len() as u64),
                None,
                "{h}"
            );
        }
        // Deep nesting is refused by the parser's recursion limit.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(tensor_starts(deep.as_bytes(), 1 << 30), None);
    }
}
