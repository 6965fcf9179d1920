//! Arbitrary bytes as the encoded entries of a field table, and of a field
//! array. What the checker accepts must iterate back into exactly the input:
//! every entry is re-encoded from the iterator, nested tables and arrays
//! recursively from their own iterators (not copied as raw bytes).
//!
//! Booleans: the parser reads any non-zero octet as true, and the encoder
//! writes 1, so a non-canonical boolean (`t` 0x02) cannot round-trip. Every
//! other byte must come back bit for bit; at the positions of boolean octets
//! the re-encoding must be the canonical 0 or 1 with the input's truth value.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use warren::protocol::{FieldArray, FieldTable, FieldValue};

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);

    if let Ok(table) = FieldTable::from_encoded(input.clone()) {
        assert_eq!(table.encoded(), &input);
        let mut out = Reencoded::default();
        out.table_entries(&table);
        out.check_against(data);
        // Lookup by key finds the first entry of that name.
        if let Some((key, first)) = table.iter().next() {
            if let Some(key) = key.as_str() {
                let found = table.get(key).expect("get misses the first key");
                assert_eq!(encode(&found), encode(&first));
            }
        }
    }

    if let Ok(array) = FieldArray::from_encoded(input.clone()) {
        assert_eq!(array.encoded(), &input);
        let mut out = Reencoded::default();
        out.array_values(&array);
        out.check_against(data);
    }
});

fn encode(v: &FieldValue) -> Vec<u8> {
    let mut out = Vec::new();
    v.encode(&mut out);
    out
}

/// A deep re-encoding, remembering where boolean octets were written.
#[derive(Default)]
struct Reencoded {
    out: Vec<u8>,
    bools: Vec<usize>,
}

impl Reencoded {
    fn table_entries(&mut self, t: &FieldTable) {
        for (key, value) in t.iter() {
            self.out.push(key.len() as u8);
            self.out.extend_from_slice(key.as_bytes());
            self.value(&value);
        }
    }

    fn array_values(&mut self, a: &FieldArray) {
        for value in a.iter() {
            self.value(&value);
        }
    }

    fn value(&mut self, v: &FieldValue) {
        let start = self.out.len();
        match v {
            FieldValue::Table(t) => self.nested(b'F', t.encoded().len(), |s| s.table_entries(t)),
            FieldValue::Array(a) => self.nested(b'A', a.encoded().len(), |s| s.array_values(a)),
            FieldValue::Bool(_) => {
                v.encode(&mut self.out);
                self.bools.push(self.out.len() - 1);
            }
            _ => v.encode(&mut self.out),
        }
        assert_eq!(
            self.out.len() - start,
            v.encoded_len(),
            "encoded_len of {v:?}"
        );
    }

    /// Tag, 32-bit length, then the contents re-encoded by `body`, whose
    /// length must match the nested value's stored encoding.
    fn nested(&mut self, tag: u8, stored_len: usize, body: impl FnOnce(&mut Self)) {
        self.out.push(tag);
        let len_at = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        body(self);
        let len = self.out.len() - len_at - 4;
        assert_eq!(
            len, stored_len,
            "nested {} iterates into a different length",
            tag as char
        );
        self.out[len_at..len_at + 4].copy_from_slice(&(len as u32).to_be_bytes());
    }

    fn check_against(&self, input: &[u8]) {
        assert_eq!(
            self.out.len(),
            input.len(),
            "re-encoding has a different length"
        );
        let mut bools = self.bools.iter().copied().peekable();
        for (i, (&was, &now)) in input.iter().zip(&self.out).enumerate() {
            if bools.peek() == Some(&i) {
                bools.next();
                assert_eq!(
                    now,
                    u8::from(was != 0),
                    "boolean at {i}: {was:#04x} -> {now:#04x}"
                );
            } else {
                assert_eq!(was, now, "byte {i} differs: {was:#04x} -> {now:#04x}");
            }
        }
    }
}
