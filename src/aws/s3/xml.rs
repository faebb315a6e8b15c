//! The few XML replies of S3 the client reads, parsed by a purpose-built
//! reader rather than an XML crate: S3 replies are flat, attribute-free
//! (but for the root's `xmlns`) element trees, and the client only picks
//! named leaf elements out of them. The caller bounds their size.
//!
//! Text is unescaped (the five named entities and numeric references);
//! `encoding-type=url` listings are percent-decoded by the caller.

/// The inner text of every `<name>...</name>` element in `xml`, in order,
/// not unescaped; `<name/>` yields an empty text. Elements of one name do
/// not nest in S3 replies.
pub(crate) fn elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name}>");
    let empty = format!("<{name}/>");
    let close = format!("</{name}>");
    let mut out = Vec::new();
    let mut rest = xml;
    loop {
        let at_open = rest.find(&open);
        let at_empty = rest.find(&empty);
        match (at_open, at_empty) {
            (Some(o), e) if e.is_none_or(|e| o < e) => {
                let start = o + open.len();
                let Some(len) = rest[start..].find(&close) else {
                    break;
                };
                out.push(&rest[start..start + len]);
                rest = &rest[start + len + close.len()..];
            }
            (_, Some(e)) => {
                out.push("");
                rest = &rest[e + empty.len()..];
            }
            _ => break,
        }
    }
    out
}

/// The unescaped text of the first `<name>` element, if any.
pub(crate) fn field(xml: &str, name: &str) -> Option<String> {
    elements(xml, name).first().map(|t| unescape(t))
}

/// XML text with entity and character references replaced. An unknown
/// or malformed reference is kept as written.
pub(crate) fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(end) = rest.find(';').filter(|e| *e <= 12) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let replaced = match entity {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .map(|h| u32::from_str_radix(h, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse::<u32>))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        match replaced {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Percent-decoding of an `encoding-type=url` listing's keys. Invalid
/// escapes are kept as written; bytes that are not UTF-8 are replaced.
pub(crate) fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let (h, l) = (hex(h).unwrap_or(0), hex(l).unwrap_or(0));
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_and_fields() {
        let xml = "<?xml version=\"1.0\"?><R xmlns=\"x\"><Contents><Key>a&amp;b</Key></Contents>\
                   <Contents><Key/></Contents><KeyMarker>m</KeyMarker><Key>c</Key></R>";
        assert_eq!(elements(xml, "Key"), ["a&amp;b", "", "c"]);
        assert_eq!(elements(xml, "Contents").len(), 2);
        assert_eq!(field(xml, "Key").as_deref(), Some("a&b"));
        assert_eq!(field(xml, "KeyMarker").as_deref(), Some("m"));
        assert_eq!(field(xml, "Nope"), None);
        // An unterminated element ends the scan rather than panicking.
        assert_eq!(elements("<Key>abc", "Key"), Vec::<&str>::new());
    }

    #[test]
    fn references_are_unescaped() {
        assert_eq!(
            unescape("&lt;a&gt; &quot;&apos; &#65;&#x42;&#X43; &bogus; & &#xFFFFFFFF;"),
            "<a> \"' ABC &bogus; & &#xFFFFFFFF;"
        );
    }

    #[test]
    fn url_decoding() {
        assert_eq!(url_decode("a%2Fb+c%0D%zz%C3%A9"), "a/b c\r%zz\u{e9}");
    }
}
