//! Percent-encoding, done one way everywhere: every byte but RFC 3986's unreserved characters
//! (`A-Za-z0-9-._~`) becomes `%XX`. That is what botocore signs an RDS IAM token's query with
//! (`quote(safe='-_.~')`, so a space is `%20`, never `+`), what keeps any password intact inside a URL's
//! userinfo (a `/` there would end it), and what Puma's control app reads a token query value as.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// The set to encode: everything that is not unreserved.
pub const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreserved_characters_stay_as_they_are() {
        let all: String = (0x20u8..0x7f).map(char::from).collect();
        let encoded = percent_encoding::utf8_percent_encode(&all, UNRESERVED).to_string();
        let kept: String = encoded.split('%').flat_map(|part| part.chars().skip(2)).collect();
        assert_eq!(kept, "-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~");
        assert_eq!(percent_encoding::utf8_percent_encode("a b/é", UNRESERVED).to_string(), "a%20b%2F%C3%A9");
    }
}
