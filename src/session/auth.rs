//! SASL responses for connection.start-ok: PLAIN, AMQPLAIN and EXTERNAL.
//! Pure functions of the credentials; no state, no I/O.

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::{value, FieldValue, LongString, ShortString};
use crate::uri::AuthMechanism;

/// The response to send in start-ok for `mechanism`.
pub(crate) fn initial_response(
    mechanism: AuthMechanism,
    username: &str,
    password: &str,
) -> LongString {
    match mechanism {
        // RFC 4616: authzid NUL authcid NUL passwd, with an empty authzid.
        AuthMechanism::Plain => {
            let mut out = BytesMut::with_capacity(2 + username.len() + password.len());
            out.put_u8(0);
            out.put_slice(username.as_bytes());
            out.put_u8(0);
            out.put_slice(password.as_bytes());
            LongString::new(out.freeze())
        }
        // A field table's entries without its length prefix: LOGIN and PASSWORD.
        AuthMechanism::AmqPlain => {
            let mut out = BytesMut::new();
            for (key, text) in [("LOGIN", username), ("PASSWORD", password)] {
                value::put_shortstr(&mut out, &ShortString::from_static(key));
                FieldValue::LongString(LongString::from(text)).encode(&mut out);
            }
            LongString::new(out.freeze())
        }
        // The identity comes from the TLS client certificate.
        AuthMechanism::External => LongString::new(Bytes::new()),
    }
}

/// Whether the server's space-separated `mechanisms` list offers `mechanism`.
pub(crate) fn server_offers(mechanisms: &LongString, mechanism: AuthMechanism) -> bool {
    mechanisms
        .as_bytes()
        .split(|b| *b == b' ')
        .any(|m| m == mechanism.name().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FieldTable;

    #[test]
    fn plain_is_nul_separated() {
        let r = initial_response(AuthMechanism::Plain, "guest", "secret");
        assert_eq!(r.as_bytes(), b"\0guest\0secret");
    }

    #[test]
    fn amqplain_is_a_table_body() {
        let r = initial_response(AuthMechanism::AmqPlain, "u", "p");
        let table = FieldTable::from_encoded(r.into_bytes()).unwrap();
        assert_eq!(table.get("LOGIN").unwrap().as_str(), Some("u"));
        assert_eq!(table.get("PASSWORD").unwrap().as_str(), Some("p"));
    }

    #[test]
    fn mechanisms_are_matched_whole() {
        let offered = LongString::from("AMQPLAIN PLAIN");
        assert!(server_offers(&offered, AuthMechanism::Plain));
        assert!(server_offers(&offered, AuthMechanism::AmqPlain));
        assert!(!server_offers(&offered, AuthMechanism::External));
    }
}
