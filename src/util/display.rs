//! Names and paths shown to people: escaped so that a hostile file name
//! cannot move the cursor, hide text or forge lines on a terminal.

/// A name or path made safe to print on one line of a terminal: bytes
/// that are not printable UTF-8 (control characters, escape sequences,
/// invalid UTF-8) are shown as `\n`, `\t`, `\\` or `\xHH`, the way GNU ls
/// quotes names on a terminal.
pub fn escape(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() || is_format_char(c) => {
                    let mut buf = [0u8; 4];
                    for byte in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{byte:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// Invisible characters that reorder or hide text on a terminal
/// (bidirectional overrides, zero-width characters).
fn is_format_char(c: char) -> bool {
    matches!(c as u32, 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2069 | 0xfeff)
}

/// A stored path (relative, bytes) for messages and listings, escaped
/// (see [`escape`]); the root is `/`.
pub fn display_path(p: &[u8]) -> String {
    if p.is_empty() {
        "/".to_string()
    } else {
        escape(p)
    }
}
