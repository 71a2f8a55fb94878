//! Request paths must be in one canonical spelling before they are compared with a
//! certificate. Anything an upstream might normalize into a different path (dot segments,
//! empty segments, encoded separators, needless escapes) is refused, never cleaned up: a
//! cleaned path is a path nobody certified.

/// Checks the path part of a request target (without the query).
pub fn check_canonical(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} does not start with '/'"));
    }
    if path.len() > 1 && path.contains("//") {
        return Err(format!("path {path:?} has an empty segment ('//')"));
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
                let Some(hex) = hex else {
                    return Err(format!(
                        "path {path:?} has a '%' that is not followed by two hex digits"
                    ));
                };
                let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16)
                    .map_err(|e| e.to_string())?;
                match v {
                    b'/' | b'\\' => return Err(format!("path {path:?} encodes a path separator ('%{}')", hex_str(hex))),
                    b'.' => return Err(format!("path {path:?} encodes a '.' ('%{}')", hex_str(hex))),
                    c if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'~' => {
                        return Err(format!(
                            "path {path:?} percent-encodes {:?}, which has a plain spelling; send it unencoded",
                            c as char
                        ))
                    }
                    0..=0x1f | 0x7f => return Err(format!("path {path:?} encodes a control character")),
                    _ => {}
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(format!("path {path:?} contains a backslash")),
            // Some servers treat ';' as starting path parameters ("/admin;x/..").
            b';' => return Err(format!("path {path:?} contains ';'")),
            _ => {}
        }
        i += 1;
    }
    for seg in path.split('/').skip(1) {
        if seg == "." || seg == ".." {
            return Err(format!("path {path:?} has a dot segment"));
        }
    }
    Ok(())
}

fn hex_str(h: &[u8]) -> String {
    String::from_utf8_lossy(h).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_canonical_paths() {
        for p in [
            "/",
            "/v1/payments",
            "/v1/items/a%20b",
            "/v1/caf%C3%A9",
            "/a-b_c~d/e.f",
            "/v1/x:y@z",
        ] {
            assert!(check_canonical(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn refuses_every_alternative_spelling() {
        for p in [
            "v1/x",
            "/v1//x",
            "//x",
            "/v1/../admin",
            "/v1/./x",
            "/v1/..",
            "/v1/%2e%2e/admin",
            "/v1/%2E/x",
            "/v1%2Fadmin",
            "/v1%2fadmin",
            "/v1%5cadmin",
            "/v1\\admin",
            "/v1/%61dmin",
            "/v1/%7e",
            "/v1/%",
            "/v1/%zz",
            "/v1/%2",
            "/admin;jsessionid=x",
            "/v1/%00",
            "*",
        ] {
            assert!(check_canonical(p).is_err(), "{p} was accepted");
        }
    }
}
