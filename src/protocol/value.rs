//! AMQP field values: short and long strings, field tables and arrays, and the
//! primitive wire parsers and encoders the generated code is built from.
//!
//! This module owns the data types that travel inside methods and content
//! headers. It never looks at frames or connection state.
//!
//! Everything parsed here is zero-copy: strings, byte arrays, tables and
//! arrays are [`Bytes`] views of the frame they arrived in. A [`FieldTable`]
//! is kept in its wire encoding, checked once when its frame is parsed, and
//! decoded entry by entry only when the user reads it; so receiving a message
//! with a `headers` table allocates nothing.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use nom::number::complete::{
    be_f32, be_f64, be_i16, be_i32, be_i64, be_i8, be_u16, be_u32, be_u64, be_u8,
};

use crate::error::DecodeErrorKind;

/// How deeply tables and arrays may nest inside one another before the
/// parser refuses the input, so hostile input cannot exhaust the stack.
pub const MAX_NESTING: usize = 32;

// ---------------------------------------------------------------------------
// Parser plumbing shared with frame.rs and generated.rs.

/// The nom error type of the codec: where parsing stopped (as an address into
/// the frame, turned into a stream offset by the frame decoder), why, and in
/// which field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError {
    pub(crate) at: usize,
    pub(crate) kind: DecodeErrorKind,
    pub(crate) context: &'static str,
}

impl<'a> nom::error::ParseError<&'a [u8]> for WireError {
    fn from_error_kind(input: &'a [u8], _kind: nom::error::ErrorKind) -> Self {
        // The codec only uses nom's `complete` parsers, whose failures all
        // mean "the field runs past the end of its container".
        WireError {
            at: input.as_ptr() as usize,
            kind: DecodeErrorKind::Truncated,
            context: "",
        }
    }

    fn append(_input: &'a [u8], _kind: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
}

/// The result of a codec parser over a slice of one frame.
pub(crate) type WireResult<'a, T> = nom::IResult<&'a [u8], T, WireError>;

/// Fails at `input` with `kind`.
pub(crate) fn fail<T>(input: &[u8], kind: DecodeErrorKind) -> WireResult<'_, T> {
    Err(nom::Err::Error(WireError {
        at: input.as_ptr() as usize,
        kind,
        context: "",
    }))
}

/// Names the field being parsed in an error that does not name one yet.
pub(crate) fn in_field(
    context: &'static str,
) -> impl Fn(nom::Err<WireError>) -> nom::Err<WireError> {
    move |err| {
        err.map(|mut e| {
            if e.context.is_empty() {
                e.context = context;
            }
            e
        })
    }
}

pub(crate) fn octet(i: &[u8]) -> WireResult<'_, u8> {
    be_u8(i)
}
pub(crate) fn short(i: &[u8]) -> WireResult<'_, u16> {
    be_u16(i)
}
pub(crate) fn long(i: &[u8]) -> WireResult<'_, u32> {
    be_u32(i)
}
pub(crate) fn longlong(i: &[u8]) -> WireResult<'_, u64> {
    be_u64(i)
}

/// Splits `len` bytes off `i`, or fails with [`DecodeErrorKind::LengthOverrun`].
fn take_len(i: &[u8], len: u64) -> WireResult<'_, &[u8]> {
    match usize::try_from(len) {
        Ok(n) if n <= i.len() => Ok((&i[n..], &i[..n])),
        _ => fail(
            i,
            DecodeErrorKind::LengthOverrun {
                declared: len,
                available: i.len(),
            },
        ),
    }
}

/// Parses a short string (one length octet, then the bytes) as a view of `src`.
pub(crate) fn shortstr<'a>(src: &Bytes, i: &'a [u8]) -> WireResult<'a, ShortString> {
    let (rest, len) = be_u8(i)?;
    let (rest, bytes) = take_len(rest, u64::from(len))?;
    Ok((rest, ShortString::from_frame(src, bytes)))
}

/// Parses a long string (a 32-bit length, then the bytes) as a view of `src`.
pub(crate) fn longstr<'a>(src: &Bytes, i: &'a [u8]) -> WireResult<'a, LongString> {
    let (rest, bytes) = long_bytes(i)?;
    Ok((rest, LongString(src.slice_ref(bytes))))
}

fn long_bytes(i: &[u8]) -> WireResult<'_, &[u8]> {
    let (rest, len) = be_u32(i)?;
    take_len(rest, u64::from(len))
}

/// Parses and validates a field table as a view of `src`.
pub(crate) fn table<'a>(src: &Bytes, i: &'a [u8]) -> WireResult<'a, FieldTable> {
    let (rest, body) = long_bytes(i)?;
    validate_table(body, MAX_NESTING)?;
    Ok((rest, FieldTable(src.slice_ref(body))))
}

// Skipping: the checks of `shortstr`, `longstr` and `table`, with the same
// errors, without building the value. Content properties are validated this
// way when their frame is parsed, and decoded later, on demand.

/// Checks a short string and steps over it.
pub(crate) fn skip_shortstr(i: &[u8]) -> WireResult<'_, ()> {
    let (rest, len) = be_u8(i)?;
    let (rest, _) = take_len(rest, u64::from(len))?;
    Ok((rest, ()))
}

/// Checks a long string's length and steps over it.
// The generator emits it for long-string properties; 0-9-1 defines none.
#[allow(dead_code)]
pub(crate) fn skip_longstr(i: &[u8]) -> WireResult<'_, ()> {
    long_bytes(i).map(|(rest, _)| (rest, ()))
}

/// Checks a field table (length and every entry) and steps over it.
pub(crate) fn skip_table(i: &[u8]) -> WireResult<'_, ()> {
    let (rest, body) = long_bytes(i)?;
    validate_table(body, MAX_NESTING)?;
    Ok((rest, ()))
}

/// How to step over one value that was checked already: what
/// [`skip_checked`] needs to know of its wire type.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Width {
    /// An octet length, then that many bytes (a short string).
    U8Prefixed,
    /// A 32-bit length, then that many bytes (a long string or table).
    U32Prefixed,
    /// A fixed number of bytes.
    Fixed(usize),
}

/// Steps over one value of `width` at the head of `i`, which was checked
/// (by the `skip_*` functions above) when its frame was parsed. `None` only
/// if it was not: callers treat that as an absent value, never a panic.
pub(crate) fn skip_checked(i: &[u8], width: Width) -> Option<&[u8]> {
    let len = match width {
        Width::U8Prefixed => 1 + usize::from(*i.first()?),
        Width::U32Prefixed => {
            let len: [u8; 4] = i.get(..4)?.try_into().ok()?;
            4 + usize::try_from(u32::from_be_bytes(len)).ok()?
        }
        Width::Fixed(n) => n,
    };
    i.get(len..)
}

/// A field table at the head of `i` that was checked when its frame was
/// parsed, as a view of `src`, without checking it again.
pub(crate) fn table_checked<'a>(src: &Bytes, i: &'a [u8]) -> WireResult<'a, FieldTable> {
    let (rest, body) = long_bytes(i)?;
    Ok((rest, FieldTable(src.slice_ref(body))))
}

pub(crate) fn put_shortstr(buf: &mut impl BufMut, s: &ShortString) {
    let bytes = s.as_bytes();
    buf.put_u8(bytes.len() as u8);
    buf.put_slice(bytes);
}

pub(crate) fn put_longstr(buf: &mut impl BufMut, s: &LongString) {
    buf.put_u32(s.0.len() as u32);
    buf.put_slice(&s.0);
}

pub(crate) fn put_table(buf: &mut impl BufMut, t: &FieldTable) {
    buf.put_u32(t.0.len() as u32);
    buf.put_slice(&t.0);
}

// ---------------------------------------------------------------------------
// Strings.

/// An AMQP short string: at most 255 bytes.
///
/// Strings of up to [`ShortString::INLINE_LEN`] bytes (most routing keys,
/// consumer tags, exchange and queue names) are held inline: copying them is
/// cheaper than sharing the frame's buffer, and costs no allocation. Longer
/// ones are zero-copy views of the frame they arrived in.
///
/// AMQP does not require short strings to be UTF-8 and warren keeps them
/// byte for byte; [`ShortString::as_str`] tells whether they are.
#[derive(Clone)]
pub struct ShortString(Repr);

#[derive(Clone)]
enum Repr {
    Inline {
        len: u8,
        bytes: [u8; ShortString::INLINE_LEN],
    },
    Shared(Bytes),
}

impl Default for ShortString {
    fn default() -> Self {
        ShortString::empty()
    }
}

impl PartialEq for ShortString {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ShortString {}

impl PartialOrd for ShortString {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ShortString {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for ShortString {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

/// A string was longer than the 255 bytes a short string can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortStringTooLong {
    /// Its length in bytes.
    pub len: usize,
}

impl fmt::Display for ShortStringTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "short string of {} bytes exceeds the 255-byte limit",
            self.len
        )
    }
}

impl std::error::Error for ShortStringTooLong {}

impl ShortString {
    /// The largest length a short string can have.
    pub const MAX_LEN: usize = 255;

    /// Strings up to this length are held inline rather than shared.
    pub const INLINE_LEN: usize = 23;

    /// The empty string.
    pub const fn empty() -> Self {
        ShortString(Repr::Inline {
            len: 0,
            bytes: [0; Self::INLINE_LEN],
        })
    }

    /// A short string from a literal, without copying.
    ///
    /// # Panics
    /// If `s` is longer than 255 bytes (a programming error in a literal).
    pub const fn from_static(s: &'static str) -> Self {
        assert!(
            s.len() <= Self::MAX_LEN,
            "short strings hold at most 255 bytes"
        );
        ShortString(Repr::Shared(Bytes::from_static(s.as_bytes())))
    }

    /// A short string from any bytes, or an error when they exceed 255.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Result<Self, ShortStringTooLong> {
        let bytes = bytes.into();
        match bytes.len() {
            len if len > Self::MAX_LEN => Err(ShortStringTooLong { len }),
            len if len <= Self::INLINE_LEN => Ok(Self::inline(&bytes)),
            _ => Ok(ShortString(Repr::Shared(bytes))),
        }
    }

    /// A copy of `bytes`, which must fit inline.
    fn inline(bytes: &[u8]) -> Self {
        let mut inline = [0; Self::INLINE_LEN];
        inline[..bytes.len()].copy_from_slice(bytes);
        ShortString(Repr::Inline {
            len: bytes.len() as u8,
            bytes: inline,
        })
    }

    /// `bytes`, a slice of `frame` at most 255 long: copied if short, else shared.
    fn from_frame(frame: &Bytes, bytes: &[u8]) -> Self {
        if bytes.len() <= Self::INLINE_LEN {
            Self::inline(bytes)
        } else {
            ShortString(Repr::Shared(frame.slice_ref(bytes)))
        }
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Shared(b) => b,
        }
    }

    /// The string as UTF-8, or `None` when the peer sent other bytes.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()).ok()
    }

    /// The string as UTF-8, with invalid sequences replaced by U+FFFD.
    pub fn to_str_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }

    /// The bytes as [`Bytes`]: the shared view of a long string, a copy of
    /// an inline one.
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            Repr::Inline { .. } => Bytes::copy_from_slice(self.as_bytes()),
            Repr::Shared(b) => b,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }
}

impl TryFrom<&str> for ShortString {
    type Error = ShortStringTooLong;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        if s.len() <= Self::INLINE_LEN {
            return Ok(Self::inline(s.as_bytes()));
        }
        Self::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl TryFrom<String> for ShortString {
    type Error = ShortStringTooLong;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::from_bytes(s)
    }
}

impl PartialEq<str> for ShortString {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for ShortString {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Display for ShortString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_str_lossy())
    }
}

impl fmt::Debug for ShortString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.to_str_lossy(), f)
    }
}

/// An AMQP long string: up to 4 GiB of bytes, a zero-copy view of its frame.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LongString(Bytes);

impl LongString {
    /// A long string holding `bytes`, without copying.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        LongString(bytes.into())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The string as UTF-8, or `None` when it holds other bytes.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The string as UTF-8, with invalid sequences replaced by U+FFFD.
    pub fn to_str_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// The underlying bytes, without copying.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for LongString {
    fn from(s: &str) -> Self {
        LongString(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for LongString {
    fn from(s: String) -> Self {
        LongString(Bytes::from(s))
    }
}

impl From<Bytes> for LongString {
    fn from(b: Bytes) -> Self {
        LongString(b)
    }
}

impl fmt::Display for LongString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_str_lossy())
    }
}

impl fmt::Debug for LongString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.to_str_lossy(), f)
    }
}

// ---------------------------------------------------------------------------
// Field values.

/// A decimal number: `value / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    /// Number of decimal places.
    pub scale: u8,
    /// The unscaled value.
    pub value: u32,
}

/// One value of a field table or array, with the type tags RabbitMQ's 0-9-1
/// errata assign (which the major clients follow).
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `t`: a boolean (any non-zero octet reads as true).
    Bool(bool),
    /// `b`: a signed 8-bit integer.
    I8(i8),
    /// `B`: an unsigned 8-bit integer.
    U8(u8),
    /// `s`: a signed 16-bit integer.
    I16(i16),
    /// `u`: an unsigned 16-bit integer.
    U16(u16),
    /// `I`: a signed 32-bit integer.
    I32(i32),
    /// `i`: an unsigned 32-bit integer.
    U32(u32),
    /// `l`: a signed 64-bit integer.
    I64(i64),
    /// `L`: an unsigned 64-bit integer.
    U64(u64),
    /// `f`: a 32-bit IEEE float.
    F32(f32),
    /// `d`: a 64-bit IEEE float.
    F64(f64),
    /// `D`: a decimal.
    Decimal(Decimal),
    /// `S`: a long string.
    LongString(LongString),
    /// `x`: a byte array.
    ByteArray(Bytes),
    /// `A`: an array of values.
    Array(FieldArray),
    /// `T`: a timestamp, seconds since the Unix epoch.
    Timestamp(u64),
    /// `F`: a nested table.
    Table(FieldTable),
    /// `V`: no value.
    Void,
}

impl FieldValue {
    /// The type tag this value is written with.
    pub fn tag(&self) -> u8 {
        match self {
            FieldValue::Bool(_) => b't',
            FieldValue::I8(_) => b'b',
            FieldValue::U8(_) => b'B',
            FieldValue::I16(_) => b's',
            FieldValue::U16(_) => b'u',
            FieldValue::I32(_) => b'I',
            FieldValue::U32(_) => b'i',
            FieldValue::I64(_) => b'l',
            FieldValue::U64(_) => b'L',
            FieldValue::F32(_) => b'f',
            FieldValue::F64(_) => b'd',
            FieldValue::Decimal(_) => b'D',
            FieldValue::LongString(_) => b'S',
            FieldValue::ByteArray(_) => b'x',
            FieldValue::Array(_) => b'A',
            FieldValue::Timestamp(_) => b'T',
            FieldValue::Table(_) => b'F',
            FieldValue::Void => b'V',
        }
    }

    /// Bytes this value takes on the wire, tag included.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            FieldValue::Bool(_) | FieldValue::I8(_) | FieldValue::U8(_) => 1,
            FieldValue::I16(_) | FieldValue::U16(_) => 2,
            FieldValue::I32(_) | FieldValue::U32(_) | FieldValue::F32(_) => 4,
            FieldValue::I64(_)
            | FieldValue::U64(_)
            | FieldValue::F64(_)
            | FieldValue::Timestamp(_) => 8,
            FieldValue::Decimal(_) => 5,
            FieldValue::LongString(s) => 4 + s.len(),
            FieldValue::ByteArray(b) => 4 + b.len(),
            FieldValue::Array(a) => 4 + a.0.len(),
            FieldValue::Table(t) => 4 + t.0.len(),
            FieldValue::Void => 0,
        }
    }

    /// Writes the tag and the value.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u8(self.tag());
        match self {
            FieldValue::Bool(v) => buf.put_u8(u8::from(*v)),
            FieldValue::I8(v) => buf.put_i8(*v),
            FieldValue::U8(v) => buf.put_u8(*v),
            FieldValue::I16(v) => buf.put_i16(*v),
            FieldValue::U16(v) => buf.put_u16(*v),
            FieldValue::I32(v) => buf.put_i32(*v),
            FieldValue::U32(v) => buf.put_u32(*v),
            FieldValue::I64(v) => buf.put_i64(*v),
            FieldValue::U64(v) => buf.put_u64(*v),
            FieldValue::F32(v) => buf.put_f32(*v),
            FieldValue::F64(v) => buf.put_f64(*v),
            FieldValue::Decimal(d) => {
                buf.put_u8(d.scale);
                buf.put_u32(d.value);
            }
            FieldValue::LongString(s) => put_longstr(buf, s),
            FieldValue::ByteArray(b) => {
                buf.put_u32(b.len() as u32);
                buf.put_slice(b);
            }
            FieldValue::Array(a) => {
                buf.put_u32(a.0.len() as u32);
                buf.put_slice(&a.0);
            }
            FieldValue::Timestamp(v) => buf.put_u64(*v),
            FieldValue::Table(t) => put_table(buf, t),
            FieldValue::Void => {}
        }
    }

    /// The value as a string, when it is a UTF-8 long string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongString(s) => s.as_str(),
            _ => None,
        }
    }

    /// The value as a signed integer, when it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::I8(v) => Some(v.into()),
            FieldValue::U8(v) => Some(v.into()),
            FieldValue::I16(v) => Some(v.into()),
            FieldValue::U16(v) => Some(v.into()),
            FieldValue::I32(v) => Some(v.into()),
            FieldValue::U32(v) => Some(v.into()),
            FieldValue::I64(v) => Some(v),
            FieldValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a boolean, when it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a table, when it is one.
    pub fn as_table(&self) -> Option<&FieldTable> {
        match self {
            FieldValue::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The value as an array, when it is one.
    pub fn as_array(&self) -> Option<&FieldArray> {
        match self {
            FieldValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

macro_rules! field_value_from {
    ($($ty:ty => $variant:ident),* $(,)?) => {
        $(impl From<$ty> for FieldValue {
            fn from(v: $ty) -> Self {
                FieldValue::$variant(v.into())
            }
        })*
    };
}

field_value_from! {
    bool => Bool, i8 => I8, u8 => U8, i16 => I16, u16 => U16, i32 => I32, u32 => U32,
    i64 => I64, u64 => U64, f32 => F32, f64 => F64, Decimal => Decimal,
    LongString => LongString, &str => LongString, String => LongString,
    FieldTable => Table, FieldArray => Array,
}

/// Parses one tagged value of a table or array that was checked when it was
/// built or parsed. Strings and nested tables and arrays become views of
/// `src`, never copies.
fn field_value<'a>(src: &Bytes, i: &'a [u8]) -> WireResult<'a, FieldValue> {
    let (i, tag) = be_u8(i)?;
    match tag {
        b't' => be_u8(i).map(|(i, v)| (i, FieldValue::Bool(v != 0))),
        b'b' => be_i8(i).map(|(i, v)| (i, FieldValue::I8(v))),
        b'B' => be_u8(i).map(|(i, v)| (i, FieldValue::U8(v))),
        b's' => be_i16(i).map(|(i, v)| (i, FieldValue::I16(v))),
        b'u' => be_u16(i).map(|(i, v)| (i, FieldValue::U16(v))),
        b'I' => be_i32(i).map(|(i, v)| (i, FieldValue::I32(v))),
        b'i' => be_u32(i).map(|(i, v)| (i, FieldValue::U32(v))),
        b'l' => be_i64(i).map(|(i, v)| (i, FieldValue::I64(v))),
        b'L' => be_u64(i).map(|(i, v)| (i, FieldValue::U64(v))),
        b'f' => be_f32(i).map(|(i, v)| (i, FieldValue::F32(v))),
        b'd' => be_f64(i).map(|(i, v)| (i, FieldValue::F64(v))),
        b'D' => {
            let (i, scale) = be_u8(i)?;
            let (i, value) = be_u32(i)?;
            Ok((i, FieldValue::Decimal(Decimal { scale, value })))
        }
        b'S' => {
            long_bytes(i).map(|(i, b)| (i, FieldValue::LongString(LongString(src.slice_ref(b)))))
        }
        b'x' => long_bytes(i).map(|(i, b)| (i, FieldValue::ByteArray(src.slice_ref(b)))),
        b'T' => be_u64(i).map(|(i, v)| (i, FieldValue::Timestamp(v))),
        b'V' => Ok((i, FieldValue::Void)),
        b'F' => long_bytes(i).map(|(i, b)| (i, FieldValue::Table(FieldTable(src.slice_ref(b))))),
        b'A' => long_bytes(i).map(|(i, b)| (i, FieldValue::Array(FieldArray(src.slice_ref(b))))),
        _ => unknown_tag(i, tag),
    }
}

/// Fails at the tag just read (one byte before `after_tag`).
fn unknown_tag<T>(after_tag: &[u8], tag: u8) -> WireResult<'_, T> {
    Err(nom::Err::Error(WireError {
        at: after_tag.as_ptr() as usize - 1,
        kind: DecodeErrorKind::UnknownFieldType { tag },
        context: "",
    }))
}

/// Bytes after the tag that a value of fixed width takes.
fn fixed_width(tag: u8) -> Option<usize> {
    Some(match tag {
        b'V' => 0,
        b't' | b'b' | b'B' => 1,
        b's' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'l' | b'L' | b'd' | b'T' => 8,
        _ => return None,
    })
}

/// Checks one tagged value without building it: fixed widths are skipped,
/// lengths checked against what is left, nested tables and arrays walked
/// with `depth_left` levels to go.
fn check_value(i: &[u8], depth_left: usize) -> WireResult<'_, ()> {
    let (i, tag) = be_u8(i)?;
    if let Some(width) = fixed_width(tag) {
        return match i.get(width..) {
            Some(rest) => Ok((rest, ())),
            None => fail(i, DecodeErrorKind::Truncated),
        };
    }
    match tag {
        b'S' | b'x' => long_bytes(i).map(|(rest, _)| (rest, ())),
        b'F' | b'A' => {
            let (rest, body) = long_bytes(i)?;
            if depth_left == 0 {
                return fail(i, DecodeErrorKind::NestingTooDeep { limit: MAX_NESTING });
            }
            if tag == b'F' {
                validate_table(body, depth_left - 1)?;
            } else {
                validate_array(body, depth_left - 1)?;
            }
            Ok((rest, ()))
        }
        _ => unknown_tag(i, tag),
    }
}

/// Checks that `body` is a well-formed sequence of table entries.
fn validate_table(mut body: &[u8], depth_left: usize) -> Result<(), nom::Err<WireError>> {
    while !body.is_empty() {
        let (rest, key_len) = be_u8(body)?;
        let (rest, _key) = take_len(rest, u64::from(key_len))?;
        let (rest, ()) = check_value(rest, depth_left)?;
        body = rest;
    }
    Ok(())
}

/// Checks that `body` is a well-formed sequence of array values.
fn validate_array(mut body: &[u8], depth_left: usize) -> Result<(), nom::Err<WireError>> {
    while !body.is_empty() {
        let (rest, ()) = check_value(body, depth_left)?;
        body = rest;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Tables and arrays.

/// An AMQP field table: string keys mapped to [`FieldValue`]s.
///
/// Kept in its wire encoding (a zero-copy view of the frame for a received
/// table), so receiving one costs nothing; reading decodes entries lazily and
/// without allocating. Building one appends encoded entries. Equality is
/// byte equality of the encodings, so a table round-trips bit for bit.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldTable(Bytes);

impl FieldTable {
    /// An empty table.
    pub const fn new() -> Self {
        FieldTable(Bytes::new())
    }

    /// Checks and adopts the encoded entries of a table (without its 32-bit
    /// length prefix).
    pub fn from_encoded(entries: Bytes) -> Result<Self, crate::error::DecodeError> {
        match validate_table(&entries, MAX_NESTING) {
            Ok(()) => Ok(FieldTable(entries)),
            Err(err) => Err(to_decode_error(err, &entries, "field table")),
        }
    }

    /// The encoded entries, without the length prefix.
    pub fn encoded(&self) -> &Bytes {
        &self.0
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of entries (decodes the table).
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// The entries in wire order. Keys and values are views of the table.
    pub fn iter(&self) -> TableIter<'_> {
        TableIter {
            src: &self.0,
            rest: &self.0,
        }
    }

    /// The value of the first entry named `key`.
    pub fn get(&self, key: &str) -> Option<FieldValue> {
        self.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Whether an entry named `key` exists.
    pub fn contains_key(&self, key: &str) -> bool {
        self.iter().any(|(k, _)| k == key)
    }

    /// Sets `key` to `value`, replacing an entry of the same name. Fails only
    /// when the key is longer than 255 bytes.
    pub fn insert<K>(
        &mut self,
        key: K,
        value: impl Into<FieldValue>,
    ) -> Result<(), ShortStringTooLong>
    where
        K: TryInto<ShortString>,
        K::Error: Into<ShortStringTooLong>,
    {
        let key = key.try_into().map_err(Into::into)?;
        let value = value.into();
        let mut out = BytesMut::with_capacity(self.0.len() + 1 + key.len() + value.encoded_len());
        for (k, v) in self.iter() {
            if k != key {
                put_shortstr(&mut out, &k);
                v.encode(&mut out);
            }
        }
        put_shortstr(&mut out, &key);
        value.encode(&mut out);
        self.0 = out.freeze();
        Ok(())
    }

    /// `insert` as a builder: `FieldTable::new().with("x-max-length", 10)?`.
    pub fn with<K>(
        mut self,
        key: K,
        value: impl Into<FieldValue>,
    ) -> Result<Self, ShortStringTooLong>
    where
        K: TryInto<ShortString>,
        K::Error: Into<ShortStringTooLong>,
    {
        self.insert(key, value)?;
        Ok(self)
    }

    /// Removes the entry named `key` and returns its value.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        let found = self.get(key)?;
        let mut out = BytesMut::with_capacity(self.0.len());
        for (k, v) in self.iter() {
            if k != key {
                put_shortstr(&mut out, &k);
                v.encode(&mut out);
            }
        }
        self.0 = out.freeze();
        Some(found)
    }
}

impl fmt::Debug for FieldTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Iterator over a [`FieldTable`]'s entries.
pub struct TableIter<'a> {
    src: &'a Bytes,
    rest: &'a [u8],
}

impl Iterator for TableIter<'_> {
    type Item = (ShortString, FieldValue);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        // The table was checked when it was built or parsed; a failure here
        // cannot happen, and ends the iteration rather than panic.
        let (rest, key) = shortstr(self.src, self.rest).ok()?;
        let (rest, value) = field_value(self.src, rest).ok()?;
        self.rest = rest;
        Some((key, value))
    }
}

/// An AMQP field array: a sequence of [`FieldValue`]s, kept encoded like
/// [`FieldTable`].
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldArray(Bytes);

impl FieldArray {
    /// An empty array.
    pub const fn new() -> Self {
        FieldArray(Bytes::new())
    }

    /// Checks and adopts the encoded values of an array (without its length prefix).
    pub fn from_encoded(values: Bytes) -> Result<Self, crate::error::DecodeError> {
        match validate_array(&values, MAX_NESTING) {
            Ok(()) => Ok(FieldArray(values)),
            Err(err) => Err(to_decode_error(err, &values, "field array")),
        }
    }

    /// The encoded values, without the length prefix.
    pub fn encoded(&self) -> &Bytes {
        &self.0
    }

    /// Whether the array is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of values (decodes the array).
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// The values in order, as views of the array.
    pub fn iter(&self) -> ArrayIter<'_> {
        ArrayIter {
            src: &self.0,
            rest: &self.0,
        }
    }

    /// Appends a value.
    pub fn push(&mut self, value: impl Into<FieldValue>) {
        let value = value.into();
        let mut out = BytesMut::from(std::mem::take(&mut self.0));
        value.encode(&mut out);
        self.0 = out.freeze();
    }
}

impl<V: Into<FieldValue>> FromIterator<V> for FieldArray {
    fn from_iter<I: IntoIterator<Item = V>>(iter: I) -> Self {
        let mut out = BytesMut::new();
        for v in iter {
            v.into().encode(&mut out);
        }
        FieldArray(out.freeze())
    }
}

impl fmt::Debug for FieldArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterator over a [`FieldArray`]'s values.
pub struct ArrayIter<'a> {
    src: &'a Bytes,
    rest: &'a [u8],
}

impl Iterator for ArrayIter<'_> {
    type Item = FieldValue;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let (rest, value) = field_value(self.src, self.rest).ok()?;
        self.rest = rest;
        Some(value)
    }
}

impl From<std::convert::Infallible> for ShortStringTooLong {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// Turns a parser failure inside `input` into a [`crate::error::DecodeError`]
/// whose offset counts from the start of `input`.
pub(crate) fn to_decode_error(
    err: nom::Err<WireError>,
    input: &[u8],
    default_context: &'static str,
) -> crate::error::DecodeError {
    let start = input.as_ptr() as usize;
    let (at, kind, context) = match err {
        nom::Err::Error(e) | nom::Err::Failure(e) => (e.at, e.kind, e.context),
        nom::Err::Incomplete(_) => (start + input.len(), DecodeErrorKind::Truncated, ""),
    };
    crate::error::DecodeError {
        offset: at.saturating_sub(start) as u64,
        kind,
        context: if context.is_empty() {
            default_context
        } else {
            context
        },
    }
}

/// `Arbitrary` for the value types, so fuzz targets and property tests can
/// build any method, property set or table (enabled by the `arbitrary`
/// feature and in warren's own tests).
#[cfg(any(test, feature = "arbitrary"))]
mod arbitrary_impls {
    use arbitrary::{Arbitrary, Result, Unstructured};
    use bytes::{Bytes, BytesMut};

    use super::{Decimal, FieldArray, FieldTable, FieldValue, LongString, ShortString};

    /// Nesting depth of generated tables and arrays: enough to exercise
    /// recursion, well inside [`super::MAX_NESTING`].
    const DEPTH: usize = 4;

    impl<'a> Arbitrary<'a> for ShortString {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            let len = u.int_in_range(0..=ShortString::MAX_LEN)?.min(u.len());
            Ok(
                ShortString::from_bytes(Bytes::copy_from_slice(u.bytes(len)?))
                    .expect("at most 255"),
            )
        }
    }

    impl<'a> Arbitrary<'a> for LongString {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            Ok(LongString(Bytes::from(Vec::<u8>::arbitrary(u)?)))
        }
    }

    impl<'a> Arbitrary<'a> for Decimal {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            Ok(Decimal {
                scale: u.arbitrary()?,
                value: u.arbitrary()?,
            })
        }
    }

    fn value(u: &mut Unstructured<'_>, depth: usize) -> Result<FieldValue> {
        Ok(match u.int_in_range(0u8..=17)? {
            0 => FieldValue::Bool(u.arbitrary()?),
            1 => FieldValue::I8(u.arbitrary()?),
            2 => FieldValue::U8(u.arbitrary()?),
            3 => FieldValue::I16(u.arbitrary()?),
            4 => FieldValue::U16(u.arbitrary()?),
            5 => FieldValue::I32(u.arbitrary()?),
            6 => FieldValue::U32(u.arbitrary()?),
            7 => FieldValue::I64(u.arbitrary()?),
            8 => FieldValue::U64(u.arbitrary()?),
            9 => FieldValue::F32(u.arbitrary()?),
            10 => FieldValue::F64(u.arbitrary()?),
            11 => FieldValue::Decimal(u.arbitrary()?),
            12 => FieldValue::LongString(u.arbitrary()?),
            13 => FieldValue::ByteArray(Bytes::from(Vec::<u8>::arbitrary(u)?)),
            14 => FieldValue::Timestamp(u.arbitrary()?),
            15 if depth > 0 => FieldValue::Table(table(u, depth - 1)?),
            16 if depth > 0 => FieldValue::Array(array(u, depth - 1)?),
            _ => FieldValue::Void,
        })
    }

    fn table(u: &mut Unstructured<'_>, depth: usize) -> Result<FieldTable> {
        let mut out = BytesMut::new();
        while !u.is_empty() && u.arbitrary::<u8>()? % 4 != 0 {
            super::put_shortstr(&mut out, &ShortString::arbitrary(u)?);
            value(u, depth)?.encode(&mut out);
        }
        Ok(FieldTable(out.freeze()))
    }

    fn array(u: &mut Unstructured<'_>, depth: usize) -> Result<FieldArray> {
        let mut out = BytesMut::new();
        while !u.is_empty() && u.arbitrary::<u8>()? % 4 != 0 {
            value(u, depth)?.encode(&mut out);
        }
        Ok(FieldArray(out.freeze()))
    }

    impl<'a> Arbitrary<'a> for FieldValue {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            value(u, DEPTH)
        }
    }

    impl<'a> Arbitrary<'a> for FieldTable {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            table(u, DEPTH)
        }
    }

    impl<'a> Arbitrary<'a> for FieldArray {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            array(u, DEPTH)
        }
    }
}

#[cfg(test)]
mod short_string_tests {
    use super::*;

    #[test]
    fn a_short_string_is_no_larger_than_a_bytes_view() {
        assert_eq!(
            std::mem::size_of::<ShortString>(),
            std::mem::size_of::<Bytes>()
        );
    }

    #[test]
    fn short_ones_are_inline_and_long_ones_share_the_frame() {
        let frame = Bytes::from(vec![b'x'; 100]);
        let short = ShortString::from_frame(&frame, &frame[..ShortString::INLINE_LEN]);
        assert!(matches!(short.0, Repr::Inline { .. }));
        let long = ShortString::from_frame(&frame, &frame[..ShortString::INLINE_LEN + 1]);
        assert_eq!(
            long.as_bytes().as_ptr(),
            frame.as_ptr(),
            "a view, not a copy"
        );
        assert_eq!(short.len(), ShortString::INLINE_LEN);
        // Equality, order and hashing are by content, whatever the representation.
        let inline = ShortString::try_from("abc").unwrap();
        let shared = ShortString::from_static("abc");
        assert_eq!(inline, shared);
        assert_eq!(inline.cmp(&shared), std::cmp::Ordering::Equal);
        let state = std::hash::RandomState::new();
        let hash = |s: &ShortString| std::hash::BuildHasher::hash_one(&state, s);
        assert_eq!(hash(&inline), hash(&shared));
        assert_eq!(inline.into_bytes(), Bytes::from_static(b"abc"));
    }
}
