//! The message body, encoded once per issue.
//!
//! lettre's builder quoted-printable-encodes the whole body again for every
//! recipient (about 190 µs for issue 17). Here the literal parts of the
//! text and HTML are encoded once; per recipient only the filled-in values
//! are encoded, each piece ending in a soft line break (`=\r\n`), which a
//! decoder removes. The result decodes to exactly the personalised text.
//! Messages that must be DKIM-signed still go through lettre (the RSA
//! signature costs far more than the encoding saved).

use lettre::message::header::{Header, HeaderValue, Headers};

use crate::render::personalise::{Escape, Fields, Personalisable, Piece, slot_value};

/// A body part with its literal pieces already quoted-printable.
#[derive(Debug, Clone)]
pub struct EncodedPart {
    pieces: Vec<EncodedPiece>,
    escape: Escape,
    size_hint: usize,
}

#[derive(Debug, Clone)]
enum EncodedPiece {
    Encoded(String),
    Slot { field: String, default: String },
}

/// Lines stop one short of RFC 2045's 76 so a soft break always fits.
const QP_LINE: usize = 75;

fn qp(text: &str, out: &mut String) {
    if text.is_empty() {
        return;
    }
    // Canonical form for text: CRLF line ends (a lone LF would be encoded
    // as =0A and the part would be one long line).
    let crlf;
    let text = if text.contains(['\n', '\r']) {
        crlf = text
            .replace("\r\n", "\n")
            .replace('\r', "\n")
            .replace('\n', "\r\n");
        crlf.as_str()
    } else {
        text
    };
    let options = quoted_printable::Options::default()
        .line_length_limit(QP_LINE)
        .input_mode(quoted_printable::InputMode::Text);
    out.push_str(&quoted_printable::encode_with_options(text, options));
    if !text.ends_with("\r\n") {
        out.push_str("=\r\n");
    }
}

impl EncodedPart {
    pub fn new(p: &Personalisable, escape: Escape) -> EncodedPart {
        let mut pieces = Vec::new();
        let mut size_hint = 0;
        for piece in p.pieces() {
            match piece {
                Piece::Text(t) => {
                    let mut s = String::with_capacity(t.len() + t.len() / 8);
                    qp(t, &mut s);
                    size_hint += s.len();
                    pieces.push(EncodedPiece::Encoded(s));
                }
                Piece::Slot { field, default } => {
                    size_hint += 64;
                    pieces.push(EncodedPiece::Slot {
                        field: field.to_string(),
                        default: default.to_string(),
                    });
                }
            }
        }
        EncodedPart {
            pieces,
            escape,
            size_hint,
        }
    }

    /// Appends this part, filled for one recipient, as quoted-printable.
    pub fn write(&self, fields: &dyn Fields, out: &mut String) {
        let mut value = String::new();
        for piece in &self.pieces {
            match piece {
                EncodedPiece::Encoded(s) => out.push_str(s),
                EncodedPiece::Slot { field, default } => {
                    value.clear();
                    slot_value(fields, field, default, self.escape, &mut value);
                    qp(&value, out);
                }
            }
        }
    }

    pub fn size_hint(&self) -> usize {
        self.size_hint
    }
}

/// A header line as lettre encodes and folds it (RFC 2047 for non-ASCII).
pub fn header_line<H: Header>(h: H) -> String {
    let mut headers = Headers::new();
    headers.set(h);
    headers.to_string()
}

/// A raw header line (the value is encoded and folded by lettre).
pub fn raw_header_line(value: HeaderValue) -> String {
    let mut headers = Headers::new();
    headers.insert_raw(value);
    headers.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::personalise::Personalisable;
    use std::collections::HashMap;

    struct Map(HashMap<&'static str, String>);
    impl Fields for Map {
        fn field(&self, f: &str) -> Option<&str> {
            self.0.get(f).map(String::as_str)
        }
    }

    fn decode(s: &str) -> String {
        String::from_utf8(
            quoted_printable::decode(s, quoted_printable::ParseMode::Strict).expect("valid QP"),
        )
        .unwrap()
    }

    #[test]
    fn pieces_decode_to_the_personalised_text() {
        let long = "word=with equals ".repeat(20);
        let source = format!(
            "<p>Hi [[tidings:first_name|friend]],</p>\n<p>{long}é</p>\n<a href=\"[[tidings:unsubscribe_url]]\">x</a> \n"
        );
        let (p, _) = Personalisable::parse(source);
        let part = EncodedPart::new(&p, Escape::Html);
        for values in [
            vec![
                ("first_name", "Zoë <b>&".to_string()),
                ("unsubscribe_url", "https://x.org/u/v1.a.b.c".into()),
            ],
            vec![("first_name", "line\r\nbreak =3D".into())],
            vec![("first_name", "é".repeat(100))],
            vec![],
        ] {
            let fields = Map(values.into_iter().collect());
            let mut out = String::new();
            part.write(&fields, &mut out);
            assert!(out.split("\r\n").all(|l| l.len() <= 76), "{out}");
            let expected = p.render(&fields, Escape::Html).replace('\n', "\r\n");
            assert_eq!(decode(&out), expected);
        }
    }
}
