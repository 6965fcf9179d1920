//! Writes `src/protocol/generated.rs` from the spec model. The output is
//! plain Rust, formatted afterwards by rustfmt.

use std::fmt::Write;

use crate::spec::{Class, Field, Method, Spec, WireType};

/// `content-type` -> `ContentType`.
fn camel(name: &str) -> String {
    name.split(['-', '_'])
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// `content-type` -> `content_type`; Rust keywords get a spec-faithful alias.
fn snake(name: &str) -> String {
    match name {
        "type" => "kind".to_string(),
        other => other.replace('-', "_"),
    }
}

/// `not-found` -> `NOT_FOUND`.
fn screaming(name: &str) -> String {
    name.replace('-', "_").to_ascii_uppercase()
}

fn struct_name(class: &Class, method: &Method) -> String {
    camel(&class.name) + &camel(&method.name)
}

fn id_const(class: &Class, method: &Method) -> String {
    format!("{}_{}", screaming(&class.name), screaming(&method.name))
}

fn rust_type(ty: WireType) -> &'static str {
    match ty {
        WireType::Bit => "bool",
        WireType::Octet => "u8",
        WireType::Short => "u16",
        WireType::Long => "u32",
        WireType::LongLong | WireType::Timestamp => "u64",
        WireType::ShortStr => "ShortString",
        WireType::LongStr => "LongString",
        WireType::Table => "FieldTable",
    }
}

/// Expression parsing one non-bit field from `i` (with `src` the frame).
fn parse_expr(ty: WireType) -> &'static str {
    match ty {
        WireType::Octet => "value::octet(i)",
        WireType::Short => "value::short(i)",
        WireType::Long => "value::long(i)",
        WireType::LongLong | WireType::Timestamp => "value::longlong(i)",
        WireType::ShortStr => "value::shortstr(src, i)",
        WireType::LongStr => "value::longstr(src, i)",
        WireType::Table => "value::table(src, i)",
        WireType::Bit => unreachable!("bits are packed"),
    }
}

/// Expression checking one non-bit field at the head of `i` without building
/// it: the same checks and errors as [`parse_expr`], yielding the rest.
fn skip_expr(ty: WireType) -> &'static str {
    match ty {
        WireType::Octet => "value::octet(i)",
        WireType::Short => "value::short(i)",
        WireType::Long => "value::long(i)",
        WireType::LongLong | WireType::Timestamp => "value::longlong(i)",
        WireType::ShortStr => "value::skip_shortstr(i)",
        WireType::LongStr => "value::skip_longstr(i)",
        WireType::Table => "value::skip_table(i)",
        WireType::Bit => unreachable!("bits are packed"),
    }
}

/// How to step over a field that was checked already (`value::Width`).
fn width_expr(ty: WireType) -> &'static str {
    match ty {
        WireType::Octet => "value::Width::Fixed(1)",
        WireType::Short => "value::Width::Fixed(2)",
        WireType::Long => "value::Width::Fixed(4)",
        WireType::LongLong | WireType::Timestamp => "value::Width::Fixed(8)",
        WireType::ShortStr => "value::Width::U8Prefixed",
        WireType::LongStr | WireType::Table => "value::Width::U32Prefixed",
        WireType::Bit => unreachable!("bits are packed"),
    }
}

/// Expression reading one checked field from `i`, strings and tables as
/// views of `src` (tables are not checked again).
fn view_expr(ty: WireType, src: &str) -> String {
    match ty {
        WireType::ShortStr => format!("value::shortstr({src}, i)"),
        WireType::LongStr => format!("value::longstr({src}, i)"),
        WireType::Table => format!("value::table_checked({src}, i)"),
        other => parse_expr(other).to_string(),
    }
}

/// Statement encoding `expr` (a place of type `rust_type(ty)`) into `buf`.
fn encode_stmt(ty: WireType, expr: &str) -> String {
    match ty {
        WireType::Octet => format!("buf.put_u8({expr});"),
        WireType::Short => format!("buf.put_u16({expr});"),
        WireType::Long => format!("buf.put_u32({expr});"),
        WireType::LongLong | WireType::Timestamp => format!("buf.put_u64({expr});"),
        WireType::ShortStr => format!("value::put_shortstr(buf, &{expr});"),
        WireType::LongStr => format!("value::put_longstr(buf, &{expr});"),
        WireType::Table => format!("value::put_table(buf, &{expr});"),
        WireType::Bit => unreachable!("bits are packed"),
    }
}

/// Statement encoding the zero value of a reserved field.
fn encode_reserved(ty: WireType) -> &'static str {
    match ty {
        WireType::Octet => "buf.put_u8(0);",
        WireType::Short => "buf.put_u16(0);",
        WireType::Long | WireType::LongStr | WireType::Table => "buf.put_u32(0);",
        WireType::LongLong | WireType::Timestamp => "buf.put_u64(0);",
        WireType::ShortStr => "buf.put_u8(0);",
        WireType::Bit => unreachable!("bits are packed"),
    }
}

/// Wire size expression of a field (`expr` names its value).
fn len_expr(ty: WireType, expr: &str) -> String {
    match ty {
        WireType::Octet => "1".into(),
        WireType::Short => "2".into(),
        WireType::Long => "4".into(),
        WireType::LongLong | WireType::Timestamp => "8".into(),
        WireType::ShortStr => format!("1 + {expr}.len()"),
        WireType::LongStr => format!("4 + {expr}.len()"),
        WireType::Table => format!("4 + {expr}.encoded().len()"),
        WireType::Bit => unreachable!("bits are packed"),
    }
}

fn reserved_len(ty: WireType) -> &'static str {
    match ty {
        WireType::Octet | WireType::ShortStr => "1",
        WireType::Short => "2",
        WireType::Long | WireType::LongStr | WireType::Table => "4",
        WireType::LongLong | WireType::Timestamp => "8",
        WireType::Bit => unreachable!("bits are packed"),
    }
}

/// A method's fields cut into runs: a run of consecutive bits shares octets.
enum Run<'a> {
    Bits(Vec<&'a Field>),
    Single(&'a Field),
}

fn runs(fields: &[Field]) -> Vec<Run<'_>> {
    let mut out: Vec<Run<'_>> = Vec::new();
    for f in fields {
        match (f.ty, out.last_mut()) {
            (WireType::Bit, Some(Run::Bits(bits))) if bits.len() < 8 => bits.push(f),
            (WireType::Bit, _) => out.push(Run::Bits(vec![f])),
            _ => out.push(Run::Single(f)),
        }
    }
    out
}

fn direction(method: &Method) -> &'static str {
    let client = method.chassis.iter().any(|c| c == "client");
    let server = method.chassis.iter().any(|c| c == "server");
    match (client, server) {
        (true, true) => "Sent by either peer",
        (true, false) => "Sent by the server",
        (false, true) => "Sent by the client",
        (false, false) => "Direction unspecified",
    }
}

/// Lets fuzz targets and property tests build any method or property set.
const ARBITRARY: &str =
    "#[cfg_attr(any(test, feature = \"arbitrary\"), derive(arbitrary::Arbitrary))]";

pub fn generate(spec: &Spec) -> String {
    let mut out = String::new();
    let o = &mut out;
    writeln!(
        o,
        "// @generated by warren-codegen from spec/amqp0-9-1.stripped.extended.xml\n\
         // and spec/rabbitmq-overlay.xml. Do not edit: change the generator or the\n\
         // overlay, then run `cargo run -p warren-codegen`.\n\
         \n\
         //! The AMQP 0-9-1 methods, content properties and constants, generated from\n\
         //! the spec XML: one struct per method, the [`Method`] enum over all of\n\
         //! them, [`BasicProperties`] (built to publish) and\n\
         //! [`EncodedBasicProperties`] (received, decoded on demand), and their nom\n\
         //! parsers and `BufMut` encoders, written from the same field lists so they\n\
         //! cannot disagree.\n\
         \n\
         use std::fmt;\n\
         \n\
         use bytes::{{Buf, BufMut, Bytes, BytesMut}};\n\
         \n\
         use super::value::{{self, FieldTable, LongString, ShortString, WireError, WireResult}};\n"
    )
    .unwrap();

    emit_constants(o, spec);
    emit_method_ids(o, spec);
    for class in &spec.classes {
        for method in &class.methods {
            emit_method_struct(o, class, method);
        }
    }
    emit_method_enum(o, spec);
    for class in &spec.classes {
        if !class.properties.is_empty() {
            emit_properties(o, class);
            emit_encoded_properties(o, class);
        }
    }
    out
}

fn emit_constants(o: &mut String, spec: &Spec) {
    for c in spec.constants.iter().filter(|c| c.class.is_none()) {
        let (ty, doc) = match c.name.as_str() {
            "frame-min-size" => (
                "u32",
                "Smallest frame_max a peer may set, and the limit before connection.tune.",
            ),
            "reply-success" => continue,
            name if name.starts_with("frame-") => ("u8", ""),
            _ => ("u32", ""),
        };
        let doc = if doc.is_empty() {
            format!("The spec's `{}` constant.", c.name)
        } else {
            doc.to_string()
        };
        writeln!(
            o,
            "/// {doc}\npub const {}: {ty} = {};",
            screaming(&c.name),
            c.value
        )
        .unwrap();
    }
    writeln!(o).unwrap();
    for class in &spec.classes {
        writeln!(
            o,
            "/// Class id of `{}`.\npub const CLASS_{}: u16 = {};",
            class.name,
            screaming(&class.name),
            class.index
        )
        .unwrap();
    }

    let codes: Vec<_> = spec
        .constants
        .iter()
        .filter(|c| c.class.is_some() || c.name == "reply-success")
        .collect();
    writeln!(
        o,
        "\n/// The reply codes of connection.close and channel.close (and basic.return).\n\
         #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]\n\
         pub enum ReplyCode {{"
    )
    .unwrap();
    for c in &codes {
        let scope = match c.class.as_deref() {
            Some("soft-error") => " A soft error: it closes the channel only.",
            Some("hard-error") => " A hard error: it closes the connection.",
            _ => "",
        };
        writeln!(
            o,
            "/// {} `{}`.{scope}\n{} = {},",
            c.value,
            screaming(&c.name),
            camel(&c.name),
            c.value
        )
        .unwrap();
    }
    writeln!(
        o,
        "}}\n\nimpl ReplyCode {{\n\
         /// The reply code with this number, if the spec defines one.\n\
         pub fn from_code(code: u16) -> Option<Self> {{\n match code {{"
    )
    .unwrap();
    for c in &codes {
        writeln!(o, "{} => Some(ReplyCode::{}),", c.value, camel(&c.name)).unwrap();
    }
    writeln!(
        o,
        "_ => None,\n}}\n}}\n\n\
         /// The numeric code.\n\
         pub fn code(self) -> u16 {{ self as u16 }}\n\n\
         /// The spec's name, as RabbitMQ prints it (`NOT_FOUND`).\n\
         pub fn name(self) -> &'static str {{\n match self {{"
    )
    .unwrap();
    for c in &codes {
        writeln!(
            o,
            "ReplyCode::{} => \"{}\",",
            camel(&c.name),
            screaming(&c.name)
        )
        .unwrap();
    }
    let list = |class: &str| {
        codes
            .iter()
            .filter(|c| c.class.as_deref() == Some(class))
            .map(|c| format!("ReplyCode::{}", camel(&c.name)))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    writeln!(
        o,
        "}}\n}}\n\n\
         /// Whether the code is a soft error, which closes only the channel.\n\
         pub fn is_soft_error(self) -> bool {{ matches!(self, {}) }}\n\n\
         /// Whether the code is a hard error, which closes the connection.\n\
         pub fn is_hard_error(self) -> bool {{ matches!(self, {}) }}\n}}\n",
        list("soft-error"),
        list("hard-error")
    )
    .unwrap();
}

fn emit_method_ids(o: &mut String, spec: &Spec) {
    writeln!(
        o,
        "/// A method's class and method ids, and what the spec says about it.\n\
         #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]\n\
         pub struct MethodId {{\n\
         /// The class id.\npub class_id: u16,\n\
         /// The method id within the class.\npub method_id: u16,\n}}\n\n\
         impl MethodId {{"
    )
    .unwrap();
    let all: Vec<(&Class, &Method)> = spec
        .classes
        .iter()
        .flat_map(|c| c.methods.iter().map(move |m| (c, m)))
        .collect();
    for (c, m) in &all {
        writeln!(
            o,
            "/// `{}.{}`.\npub const {}: MethodId = MethodId {{ class_id: {}, method_id: {} }};",
            c.name,
            m.name,
            id_const(c, m),
            c.index,
            m.index
        )
        .unwrap();
    }
    writeln!(
        o,
        "\n/// Every method of the protocol, in class then method order.\n\
         pub const ALL: &'static [MethodId] = &[{}];",
        all.iter()
            .map(|(c, m)| format!("MethodId::{}", id_const(c, m)))
            .collect::<Vec<_>>()
            .join(", ")
    )
    .unwrap();
    let arms = |f: &dyn Fn(&Class, &Method) -> Option<String>| {
        let mut s = String::new();
        for (c, m) in &all {
            if let Some(v) = f(c, m) {
                writeln!(s, "({}, {}) => {v},", c.index, m.index).unwrap();
            }
        }
        s
    };
    writeln!(
        o,
        "\n/// `class.method` as the spec names it, or `None` for an unknown pair.\n\
         pub fn name(self) -> Option<&'static str> {{\n\
         Some(match (self.class_id, self.method_id) {{\n{}_ => return None,\n}})\n}}",
        arms(&|c, m| Some(format!("\"{}.{}\"", c.name, m.name)))
    )
    .unwrap();
    writeln!(
        o,
        "\n/// Whether the sender waits for one of [`MethodId::responses`].\n\
         pub fn is_synchronous(self) -> bool {{\n\
         matches!((self.class_id, self.method_id), {})\n}}",
        all.iter()
            .filter(|(_, m)| m.synchronous && !m.responses.is_empty())
            .map(|(c, m)| format!("({}, {})", c.index, m.index))
            .collect::<Vec<_>>()
            .join(" | ")
    )
    .unwrap();
    writeln!(
        o,
        "\n/// Whether the method is followed by a content header and body.\n\
         pub fn has_content(self) -> bool {{\n\
         matches!((self.class_id, self.method_id), {})\n}}",
        all.iter()
            .filter(|(_, m)| m.content)
            .map(|(c, m)| format!("({}, {})", c.index, m.index))
            .collect::<Vec<_>>()
            .join(" | ")
    )
    .unwrap();
    writeln!(
        o,
        "\n/// The methods that may answer this one (empty for asynchronous methods).\n\
         pub fn responses(self) -> &'static [MethodId] {{\n\
         match (self.class_id, self.method_id) {{\n{}_ => &[],\n}}\n}}",
        arms(&|c, m| {
            if m.responses.is_empty() {
                return None;
            }
            let list: Vec<String> = m
                .responses
                .iter()
                .map(|r| {
                    let target = c.methods.iter().find(|x| &x.name == r).unwrap();
                    format!("MethodId::{}", id_const(c, target))
                })
                .collect();
            Some(format!("&[{}]", list.join(", ")))
        })
    )
    .unwrap();
    for (who, doc) in [("client", "server"), ("server", "client")] {
        // A method the `server` chassis implements is one the client sends.
        let sender = if who == "server" { "client" } else { "server" };
        writeln!(
            o,
            "\n/// Whether the {sender} may send this method (the {doc}'s side implements it).\n\
             pub fn sent_by_{sender}(self) -> bool {{\n\
             matches!((self.class_id, self.method_id), {})\n}}",
            all.iter()
                .filter(|(_, m)| m.chassis.iter().any(|c| c == who))
                .map(|(c, m)| format!("({}, {})", c.index, m.index))
                .collect::<Vec<_>>()
                .join(" | ")
        )
        .unwrap();
    }
    writeln!(o, "}}\n").unwrap();
}

fn emit_method_struct(o: &mut String, class: &Class, method: &Method) {
    let name = struct_name(class, method);
    let full = format!("{}.{}", class.name, method.name);
    let mut doc = format!(
        "/// `{full}` (class {}, method {}). {}",
        class.index,
        method.index,
        direction(method)
    );
    if method.synchronous && !method.responses.is_empty() {
        let answers: Vec<String> = method
            .responses
            .iter()
            .map(|r| format!("`{}.{r}`", class.name))
            .collect();
        write!(doc, "; answered by {}", answers.join(" or ")).unwrap();
    } else if method.synchronous {
        doc.push_str("; a reply");
    } else {
        doc.push_str("; asynchronous");
    }
    if method.content {
        doc.push_str("; carries content");
    }
    doc.push('.');
    let fields: Vec<&Field> = method.fields.iter().filter(|f| !f.reserved).collect();
    writeln!(
        o,
        "{doc}\n#[derive(Debug, Clone, Default, PartialEq, Eq)]\n{ARBITRARY}"
    )
    .unwrap();
    if fields.is_empty() {
        writeln!(o, "pub struct {name};\n").unwrap();
    } else {
        writeln!(o, "pub struct {name} {{").unwrap();
        for f in &fields {
            let domain = f
                .domain
                .as_deref()
                .filter(|d| *d != f.ty.xml_name())
                .map(|d| format!(", domain `{d}`"))
                .unwrap_or_default();
            writeln!(
                o,
                "/// `{}` ({}{domain}).\npub {}: {},",
                f.name,
                f.ty.xml_name(),
                snake(&f.name),
                rust_type(f.ty)
            )
            .unwrap();
        }
        writeln!(o, "}}\n").unwrap();
    }

    // decode
    let mut decode = String::new();
    for run in runs(&method.fields) {
        match run {
            Run::Single(f) => {
                let var = if f.reserved {
                    "_".to_string()
                } else {
                    snake(&f.name)
                };
                writeln!(
                    decode,
                    "let (i, {var}) = {}.map_err(value::in_field(\"{full} {}\"))?;",
                    parse_expr(f.ty),
                    f.name
                )
                .unwrap();
            }
            Run::Bits(bits) => {
                let any_used = bits.iter().any(|f| !f.reserved);
                let var = if any_used { "bits" } else { "_" };
                writeln!(
                    decode,
                    "let (i, {var}) = value::octet(i).map_err(value::in_field(\"{full} {}\"))?;",
                    bits[0].name
                )
                .unwrap();
                for (n, f) in bits.iter().enumerate() {
                    if !f.reserved {
                        let mask = if n == 0 {
                            "1".to_string()
                        } else {
                            format!("(1 << {n})")
                        };
                        writeln!(decode, "let {} = bits & {mask} != 0;", snake(&f.name)).unwrap();
                    }
                }
            }
        }
    }
    let uses_src = method.fields.iter().any(|f| {
        matches!(
            f.ty,
            WireType::ShortStr | WireType::LongStr | WireType::Table
        )
    });
    let src = if uses_src { "src" } else { "_src" };
    let construct = if fields.is_empty() {
        name.clone()
    } else {
        format!(
            "{name} {{ {} }}",
            fields
                .iter()
                .map(|f| snake(&f.name))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };

    // encode and encoded_len
    let mut encode = String::new();
    let mut lens: Vec<String> = Vec::new();
    for run in runs(&method.fields) {
        match run {
            Run::Single(f) if f.reserved => {
                writeln!(encode, "{}", encode_reserved(f.ty)).unwrap();
                lens.push(reserved_len(f.ty).to_string());
            }
            Run::Single(f) => {
                let place = format!("self.{}", snake(&f.name));
                writeln!(encode, "{}", encode_stmt(f.ty, &place)).unwrap();
                lens.push(len_expr(f.ty, &place));
            }
            Run::Bits(bits) => {
                let parts: Vec<String> = bits
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| !f.reserved)
                    .map(|(n, f)| match n {
                        0 => format!("u8::from(self.{})", snake(&f.name)),
                        _ => format!("(u8::from(self.{}) << {n})", snake(&f.name)),
                    })
                    .collect();
                if parts.is_empty() {
                    writeln!(encode, "buf.put_u8(0);").unwrap();
                } else {
                    writeln!(encode, "buf.put_u8({});", parts.join(" | ")).unwrap();
                }
                lens.push("1".into());
            }
        }
    }
    let buf = if method.fields.is_empty() {
        "_buf"
    } else {
        "buf"
    };
    let encode = if method.fields.is_empty() {
        String::new()
    } else {
        encode
    };
    let len = if lens.is_empty() {
        "0".to_string()
    } else {
        lens.join(" + ")
    };
    writeln!(
        o,
        "impl {name} {{\n\
         /// Class and method ids of `{full}`.\n\
         pub const ID: MethodId = MethodId::{id};\n\n\
         fn decode<'a>({src}: &Bytes, i: &'a [u8]) -> WireResult<'a, Self> {{\n\
         {decode}Ok((i, {construct}))\n}}\n\n\
         /// Bytes the arguments take on the wire.\n\
         pub fn encoded_len(&self) -> usize {{ {len} }}\n\n\
         /// Writes the arguments (not the class and method ids).\n\
         pub fn encode(&self, {buf}: &mut impl BufMut) {{\n{encode}}}\n}}\n\n\
         impl From<{name}> for Method {{\n\
         fn from(m: {name}) -> Self {{ Method::{name}(m) }}\n}}\n",
        id = id_const(class, method),
    )
    .unwrap();
}

fn emit_method_enum(o: &mut String, spec: &Spec) {
    let all: Vec<(&Class, &Method)> = spec
        .classes
        .iter()
        .flat_map(|c| c.methods.iter().map(move |m| (c, m)))
        .collect();
    writeln!(
        o,
        "/// Any AMQP 0-9-1 method with its arguments.\n\
         #[derive(Debug, Clone, PartialEq, Eq)]\n{ARBITRARY}\n\
         pub enum Method {{"
    )
    .unwrap();
    for (c, m) in &all {
        writeln!(
            o,
            "/// `{}.{}`.\n{n}({n}),",
            c.name,
            m.name,
            n = struct_name(c, m)
        )
        .unwrap();
    }
    writeln!(o, "}}\n\nimpl Method {{\n/// The method's class and method ids.\npub fn id(&self) -> MethodId {{\nmatch self {{").unwrap();
    for (c, m) in &all {
        writeln!(o, "Method::{n}(_) => {n}::ID,", n = struct_name(c, m)).unwrap();
    }
    writeln!(
        o,
        "}}\n}}\n\n\
         /// The class id.\npub fn class_id(&self) -> u16 {{ self.id().class_id }}\n\n\
         /// The method id within the class.\npub fn method_id(&self) -> u16 {{ self.id().method_id }}\n\n\
         /// `class.method` as the spec names it, e.g. `\"basic.deliver\"`.\n\
         pub fn name(&self) -> &'static str {{\nmatch self {{"
    )
    .unwrap();
    for (c, m) in &all {
        writeln!(
            o,
            "Method::{}(_) => \"{}.{}\",",
            struct_name(c, m),
            c.name,
            m.name
        )
        .unwrap();
    }
    writeln!(
        o,
        "}}\n}}\n\n\
         /// Whether the sender waits for one of [`Method::responses`].\n\
         pub fn is_synchronous(&self) -> bool {{ self.id().is_synchronous() }}\n\n\
         /// Whether a content header and body follow the method.\n\
         pub fn has_content(&self) -> bool {{ self.id().has_content() }}\n\n\
         /// The methods that may answer this one.\n\
         pub fn responses(&self) -> &'static [MethodId] {{ self.id().responses() }}\n\n\
         /// Bytes the method takes in a frame: class and method ids, then arguments.\n\
         pub fn encoded_len(&self) -> usize {{\n4 + match self {{"
    )
    .unwrap();
    for (c, m) in &all {
        writeln!(o, "Method::{}(m) => m.encoded_len(),", struct_name(c, m)).unwrap();
    }
    writeln!(
        o,
        "}}\n}}\n\n\
         /// Writes class id, method id and arguments: a method frame's payload.\n\
         pub fn encode(&self, buf: &mut impl BufMut) {{\n\
         let id = self.id();\nbuf.put_u16(id.class_id);\nbuf.put_u16(id.method_id);\n\
         match self {{"
    )
    .unwrap();
    for (c, m) in &all {
        writeln!(o, "Method::{}(m) => m.encode(buf),", struct_name(c, m)).unwrap();
    }
    writeln!(
        o,
        "}}\n}}\n\n\
         /// Parses a method frame's payload from `i`, a slice of `src`; strings\n\
         /// and tables become views of `src`.\n\
         pub(crate) fn decode<'a>(src: &Bytes, i: &'a [u8]) -> WireResult<'a, Self> {{\n\
         let start = i;\n\
         let (i, class_id) = value::short(i).map_err(value::in_field(\"method class id\"))?;\n\
         let (i, method_id) = value::short(i).map_err(value::in_field(\"method id\"))?;\n\
         match (class_id, method_id) {{"
    )
    .unwrap();
    for (c, m) in &all {
        writeln!(
            o,
            "({}, {}) => {n}::decode(src, i).map(|(i, m)| (i, Method::{n}(m))),",
            c.index,
            m.index,
            n = struct_name(c, m)
        )
        .unwrap();
    }
    writeln!(
        o,
        "_ => Err(nom::Err::Error(WireError {{\n\
         at: start.as_ptr() as usize,\n\
         kind: crate::error::DecodeErrorKind::UnknownMethod {{ class_id, method_id }},\n\
         context: \"method\",\n}})),\n}}\n}}\n}}\n"
    )
    .unwrap();
    writeln!(
        o,
        "/// `class.method` then `field=value` for each argument, as the spec\n\
         /// names them: `basic.ack delivery-tag=1 multiple=false`.\n\
         impl fmt::Display for Method {{\n\
         fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {{\n\
         f.write_str(self.name())?;\nmatch self {{"
    )
    .unwrap();
    for (c, m) in &all {
        let fields: Vec<&Field> = m.fields.iter().filter(|f| !f.reserved).collect();
        if fields.is_empty() {
            writeln!(o, "Method::{}(_) => {{}}", struct_name(c, m)).unwrap();
            continue;
        }
        writeln!(o, "Method::{}(m) => {{", struct_name(c, m)).unwrap();
        for f in fields {
            writeln!(
                o,
                "write!(f, \" {}={{:?}}\", m.{})?;",
                f.name,
                snake(&f.name)
            )
            .unwrap();
        }
        writeln!(o, "}}").unwrap();
    }
    writeln!(o, "}}\nOk(())\n}}\n}}\n").unwrap();
}

fn emit_properties(o: &mut String, class: &Class) {
    let name = format!("{}Properties", camel(&class.name));
    let users: Vec<String> = class
        .methods
        .iter()
        .filter(|m| m.content)
        .map(|m| format!("`{}.{}`", class.name, m.name))
        .collect();
    writeln!(
        o,
        "/// The content properties of class `{}` (the content header of {}).\n\
         /// Each is optional; the property-flags word says which are present.\n\
         ///\n\
         /// This is the owned form, built to publish; received messages carry\n\
         /// [`Encoded{name}`], which decodes them on demand.\n\
         #[derive(Debug, Clone, Default, PartialEq, Eq)]\n{ARBITRARY}\npub struct {name} {{",
        class.name,
        users.join(", ")
    )
    .unwrap();
    for f in &class.properties {
        writeln!(
            o,
            "/// `{}` ({}).\npub {}: Option<{}>,",
            f.name,
            f.ty.xml_name(),
            snake(&f.name),
            rust_type(f.ty)
        )
        .unwrap();
    }
    writeln!(o, "}}\n\nimpl {name} {{").unwrap();
    // Property n (0-based) is flag bit 15 - n.
    let bit = |n: usize| 15 - n;
    let defined_mask: u16 = class
        .properties
        .iter()
        .enumerate()
        .fold(0, |m, (n, _)| m | (1 << bit(n)));
    writeln!(
        o,
        "/// Flag bits of the defined properties (the rest must be zero).\n\
         pub const DEFINED_FLAGS: u16 = {defined_mask:#06x};\n\n\
         /// The property-flags word: bit 15 for the first property, downwards.\n\
         pub fn flags(&self) -> u16 {{\nlet mut flags = 0;"
    )
    .unwrap();
    for (n, f) in class.properties.iter().enumerate() {
        writeln!(
            o,
            "if self.{}.is_some() {{ flags |= 1 << {}; }}",
            snake(&f.name),
            bit(n)
        )
        .unwrap();
    }
    writeln!(
        o,
        "flags\n}}\n\n\
         /// Bytes the flags word and the present properties take.\n\
         pub fn encoded_len(&self) -> usize {{\nlet mut len = 2;"
    )
    .unwrap();
    for f in &class.properties {
        let len = len_expr(f.ty, "v");
        if len.contains('v') {
            writeln!(
                o,
                "if let Some(v) = &self.{} {{ len += {len}; }}",
                snake(&f.name)
            )
            .unwrap();
        } else {
            writeln!(
                o,
                "if self.{}.is_some() {{ len += {len}; }}",
                snake(&f.name)
            )
            .unwrap();
        }
    }
    writeln!(
        o,
        "len\n}}\n\n\
         /// Writes the flags word and the present properties.\n\
         pub fn encode(&self, buf: &mut impl BufMut) {{\nbuf.put_u16(self.flags());"
    )
    .unwrap();
    for f in &class.properties {
        let stmt = encode_stmt(f.ty, "*v").replace("&*v", "v");
        writeln!(o, "if let Some(v) = &self.{} {{ {stmt} }}", snake(&f.name)).unwrap();
    }
    writeln!(o, "}}\n").unwrap();
    for f in &class.properties {
        writeln!(
            o,
            "/// Sets `{}`.\npub fn with_{}(mut self, value: {}) -> Self {{ self.{} = Some(value); self }}\n",
            f.name,
            snake(&f.name),
            rust_type(f.ty),
            snake(&f.name)
        )
        .unwrap();
    }
    writeln!(o, "}}\n").unwrap();
    writeln!(
        o,
        "/// The present properties as `name=value`, separated by spaces.\n\
         impl fmt::Display for {name} {{\n\
         fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {{\n\
         let mut sep = \"\";"
    )
    .unwrap();
    for f in &class.properties {
        writeln!(
            o,
            "if let Some(v) = &self.{} {{ write!(f, \"{{sep}}{}={{v:?}}\")?; sep = \" \"; }}",
            snake(&f.name),
            f.name
        )
        .unwrap();
    }
    writeln!(o, "let _ = sep;\nOk(())\n}}\n}}").unwrap();
}

/// `Encoded{Class}Properties`: received properties kept in their wire form,
/// checked once when the frame is parsed, decoded property by property.
fn emit_encoded_properties(o: &mut String, class: &Class) {
    let owned = format!("{}Properties", camel(&class.name));
    let name = format!("Encoded{owned}");
    let cls = &class.name;
    let count = class.properties.len();
    let users: Vec<String> = class
        .methods
        .iter()
        .filter(|m| m.content)
        .map(|m| format!("`{}.{}`", class.name, m.name))
        .collect();
    // Property n (0-based) is flag bit 15 - n.
    let bit = |n: usize| 15 - n;
    writeln!(
        o,
        "\n/// The content properties of class `{cls}` as received (in the content\n\
         /// header of {users}): the property-flags word and a zero-copy view of\n\
         /// the properties' wire encoding, checked once when the frame was parsed\n\
         /// and decoded on demand. Each getter skips the properties before its own\n\
         /// and decodes only that one, without allocating (short strings of up to\n\
         /// [`ShortString::INLINE_LEN`] bytes are copied inline, longer ones and\n\
         /// tables are views); [`{name}::to_properties`] decodes them all.\n\
         ///\n\
         /// The view holds exactly the properties the flags announce, after the\n\
         /// flags word (bytes a peer adds after them are not kept). The encoding of\n\
         /// given properties is unique, so two values are equal exactly when their\n\
         /// properties are. `From<&{owned}>` encodes owned properties.\n\
         #[derive(Clone, Default, PartialEq, Eq)]\n\
         pub struct {name} {{\n\
         flags: u16,\n\
         raw: Bytes,\n\
         }}\n\n\
         impl {name} {{\n\
         /// How to step over each property, in flag order.\n\
         const WIDTHS: [value::Width; {count}] = [{widths}];\n\n\
         /// The property-flags word: bit 15 for the first property, downwards.\n\
         pub fn flags(&self) -> u16 {{ self.flags }}\n\n\
         /// The encoded properties that follow the flags word.\n\
         pub fn raw(&self) -> &Bytes {{ &self.raw }}\n\n\
         /// Whether no property is present.\n\
         pub fn is_empty(&self) -> bool {{ self.flags == 0 }}\n\n\
         /// Bytes the flags word and the present properties take.\n\
         pub fn encoded_len(&self) -> usize {{ 2 + self.raw.len() }}\n\n\
         /// Writes the flags word and the present properties.\n\
         pub fn encode(&self, buf: &mut impl BufMut) {{\n\
         buf.put_u16(self.flags);\nbuf.put_slice(&self.raw);\n}}\n\n\
         /// Parses the flags word and checks the properties it announces,\n\
         /// without building them: the errors (kind, field, offset) are those a\n\
         /// full decode would report. The result is a view of `src`.\n\
         pub(crate) fn decode<'a>(src: &Bytes, i: &'a [u8]) -> WireResult<'a, Self> {{\n\
         let flags_at = i.as_ptr() as usize;\n\
         let (i, flags) = value::short(i).map_err(value::in_field(\"{cls} property flags\"))?;\n\
         if flags & !{owned}::DEFINED_FLAGS != 0 {{\n\
         return Err(nom::Err::Error(WireError {{\n\
         at: flags_at,\n\
         kind: crate::error::DecodeErrorKind::InvalidPropertyFlags {{ flags }},\n\
         context: \"{cls} property flags\",\n}}));\n}}\n\
         let start = i;\nlet mut i = i;",
        users = users.join(", "),
        widths = class
            .properties
            .iter()
            .map(|f| width_expr(f.ty))
            .collect::<Vec<_>>()
            .join(", "),
    )
    .unwrap();
    for (n, f) in class.properties.iter().enumerate() {
        writeln!(
            o,
            "if flags & (1 << {}) != 0 {{\n\
             let (rest, _) = {}.map_err(value::in_field(\"{cls} property {}\"))?;\n\
             i = rest;\n}}",
            bit(n),
            skip_expr(f.ty),
            f.name,
        )
        .unwrap();
    }
    writeln!(
        o,
        "let raw = src.slice_ref(&start[..start.len() - i.len()]);\n\
         Ok((i, {name} {{ flags, raw }}))\n}}\n\n\
         /// Property `index` (in flag order), from its first byte, when present.\n\
         fn find(&self, index: usize) -> Option<&[u8]> {{\n\
         if self.flags & (1 << (15 - index)) == 0 {{\nreturn None;\n}}\n\
         let mut i: &[u8] = &self.raw;\n\
         for (n, width) in Self::WIDTHS[..index].iter().enumerate() {{\n\
         if self.flags & (1 << (15 - n)) != 0 {{\n\
         i = value::skip_checked(i, *width)?;\n}}\n}}\n\
         Some(i)\n}}\n"
    )
    .unwrap();
    for (n, f) in class.properties.iter().enumerate() {
        writeln!(
            o,
            "/// `{}` ({}), when present.\n\
             pub fn {}(&self) -> Option<{}> {{\n\
             let i = self.find({n})?;\n\
             {}.ok().map(|(_, v)| v)\n}}\n",
            f.name,
            f.ty.xml_name(),
            snake(&f.name),
            rust_type(f.ty),
            view_expr(f.ty, "&self.raw"),
        )
        .unwrap();
    }
    writeln!(
        o,
        "/// Decodes every present property into the owned form.\n\
         pub fn to_properties(&self) -> {owned} {{\n\
         let mut props = {owned}::default();\n\
         let src = &self.raw;\n\
         let mut i: &[u8] = src;"
    )
    .unwrap();
    for (n, f) in class.properties.iter().enumerate() {
        // The last property leaves nothing to read after it.
        let (rest, advance) = if n + 1 == count {
            ("_", "")
        } else {
            ("rest", "\ni = rest;")
        };
        writeln!(
            o,
            "if self.flags & (1 << {}) != 0 {{\n\
             let Ok(({rest}, v)) = {} else {{ return props; }};\n\
             props.{} = Some(v);{advance}\n}}",
            bit(n),
            view_expr(f.ty, "src"),
            snake(&f.name),
        )
        .unwrap();
    }
    writeln!(
        o,
        "props\n}}\n}}\n\n\
         impl From<&{owned}> for {name} {{\n\
         /// Encodes `properties` into a fresh buffer.\n\
         fn from(properties: &{owned}) -> Self {{\n\
         let flags = properties.flags();\n\
         if flags == 0 {{\nreturn Self::default();\n}}\n\
         let mut raw = BytesMut::with_capacity(properties.encoded_len());\n\
         properties.encode(&mut raw);\n\
         raw.advance(2); // the flags word, kept apart\n\
         {name} {{ flags, raw: raw.freeze() }}\n}}\n}}\n\n\
         impl From<{owned}> for {name} {{\n\
         fn from(properties: {owned}) -> Self {{ Self::from(&properties) }}\n}}\n\n\
         /// Encoded arbitrary [`{owned}`].\n\
         #[cfg(any(test, feature = \"arbitrary\"))]\n\
         impl<'a> arbitrary::Arbitrary<'a> for {name} {{\n\
         fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {{\n\
         Ok(Self::from(<{owned} as arbitrary::Arbitrary>::arbitrary(u)?))\n}}\n}}\n\n\
         /// The present properties, decoded.\n\
         impl fmt::Debug for {name} {{\n\
         fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {{\n\
         let props = self.to_properties();\n\
         let mut d = f.debug_struct(\"{name}\");"
    )
    .unwrap();
    for f in &class.properties {
        let field = snake(&f.name);
        writeln!(
            o,
            "if let Some(v) = &props.{field} {{ d.field(\"{field}\", v); }}"
        )
        .unwrap();
    }
    writeln!(
        o,
        "d.finish()\n}}\n}}\n\n\
         /// As [`{owned}`]'s `Display`: the present properties as `name=value`.\n\
         impl fmt::Display for {name} {{\n\
         fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {{\n\
         fmt::Display::fmt(&self.to_properties(), f)\n}}\n}}"
    )
    .unwrap();
}
