//! Reads the AMQP spec XML and the project's overlay into a small model.

use std::collections::HashMap;

/// The primitive wire types of AMQP 0-9-1 method and property fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    Bit,
    Octet,
    Short,
    Long,
    LongLong,
    Timestamp,
    ShortStr,
    LongStr,
    Table,
}

impl WireType {
    fn from_xml(name: &str) -> Result<Self, String> {
        Ok(match name {
            "bit" => WireType::Bit,
            "octet" => WireType::Octet,
            "short" => WireType::Short,
            "long" => WireType::Long,
            "longlong" => WireType::LongLong,
            "timestamp" => WireType::Timestamp,
            "shortstr" => WireType::ShortStr,
            "longstr" => WireType::LongStr,
            "table" => WireType::Table,
            other => return Err(format!("unknown wire type {other:?}")),
        })
    }

    /// The spec's name for the type.
    pub fn xml_name(self) -> &'static str {
        match self {
            WireType::Bit => "bit",
            WireType::Octet => "octet",
            WireType::Short => "short",
            WireType::Long => "long",
            WireType::LongLong => "longlong",
            WireType::Timestamp => "timestamp",
            WireType::ShortStr => "shortstr",
            WireType::LongStr => "longstr",
            WireType::Table => "table",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Constant {
    pub name: String,
    pub value: u32,
    /// `soft-error`, `hard-error` or none.
    pub class: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub ty: WireType,
    /// The domain the field was declared with, when not a bare type.
    pub domain: Option<String>,
    pub reserved: bool,
}

#[derive(Debug, Clone)]
pub struct Method {
    pub name: String,
    pub index: u16,
    pub synchronous: bool,
    pub content: bool,
    pub responses: Vec<String>,
    /// Which peers must implement receiving it: `client`, `server`.
    pub chassis: Vec<String>,
    pub fields: Vec<Field>,
}

#[derive(Debug, Clone)]
pub struct Class {
    pub name: String,
    pub index: u16,
    pub methods: Vec<Method>,
    /// Content properties (only `basic` has them in 0-9-1).
    pub properties: Vec<Field>,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub constants: Vec<Constant>,
    pub classes: Vec<Class>,
}

fn attr<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> Result<&'a str, String> {
    node.attribute(name).ok_or_else(|| {
        format!(
            "<{}> at byte {} lacks attribute {name:?}",
            node.tag_name().name(),
            node.range().start
        )
    })
}

fn number<T: std::str::FromStr>(node: roxmltree::Node<'_, '_>, name: &str) -> Result<T, String> {
    let text = attr(node, name)?;
    text.parse()
        .map_err(|_| format!("attribute {name}={text:?} is not a number"))
}

fn children<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    tag: &'static str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    node.children()
        .filter(move |n| n.is_element() && n.tag_name().name() == tag)
}

/// Parses one spec document into its constants, classes and domains.
fn parse_document(text: &str, domains: &mut HashMap<String, WireType>) -> Result<Spec, String> {
    let doc = roxmltree::Document::parse(text).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    for d in children(root, "domain") {
        domains.insert(
            attr(d, "name")?.to_string(),
            WireType::from_xml(attr(d, "type")?)?,
        );
    }
    let field = |f: roxmltree::Node<'_, '_>| -> Result<Field, String> {
        let name = attr(f, "name")?.to_string();
        let (ty, domain) = match (f.attribute("domain"), f.attribute("type")) {
            (Some(d), _) => (
                *domains
                    .get(d)
                    .ok_or_else(|| format!("field {name:?}: unknown domain {d:?}"))?,
                Some(d.to_string()),
            ),
            (None, Some(t)) => (WireType::from_xml(t)?, None),
            (None, None) => return Err(format!("field {name:?} has neither domain nor type")),
        };
        Ok(Field {
            name,
            ty,
            domain,
            reserved: f.attribute("reserved") == Some("1"),
        })
    };
    let mut constants = Vec::new();
    for c in children(root, "constant") {
        constants.push(Constant {
            name: attr(c, "name")?.to_string(),
            value: number(c, "value")?,
            class: c.attribute("class").map(str::to_string),
        });
    }
    let mut classes = Vec::new();
    for c in children(root, "class") {
        let mut methods = Vec::new();
        for m in children(c, "method") {
            methods.push(Method {
                name: attr(m, "name")?.to_string(),
                index: number(m, "index")?,
                synchronous: m.attribute("synchronous") == Some("1"),
                content: m.attribute("content") == Some("1"),
                responses: children(m, "response")
                    .map(|r| attr(r, "name").map(str::to_string))
                    .collect::<Result<_, _>>()?,
                chassis: children(m, "chassis")
                    .map(|r| attr(r, "name").map(str::to_string))
                    .collect::<Result<_, _>>()?,
                fields: children(m, "field").map(field).collect::<Result<_, _>>()?,
            });
        }
        classes.push(Class {
            name: attr(c, "name")?.to_string(),
            index: number(c, "index")?,
            methods,
            properties: children(c, "field").map(field).collect::<Result<_, _>>()?,
        });
    }
    Ok(Spec { constants, classes })
}

/// Reads the spec and merges the overlay into it, as the overlay's header
/// comment describes: new constants are added, a method that exists is
/// amended (attributes set, responses and chassis added), a new method or
/// class is added.
pub fn load(spec_xml: &str, overlay_xml: &str) -> Result<Spec, String> {
    let mut domains = HashMap::new();
    let mut spec = parse_document(spec_xml, &mut domains).map_err(|e| format!("spec: {e}"))?;
    let overlay = parse_document(overlay_xml, &mut domains).map_err(|e| format!("overlay: {e}"))?;

    for constant in overlay.constants {
        if spec.constants.iter().any(|c| c.name == constant.name) {
            return Err(format!("overlay redefines constant {:?}", constant.name));
        }
        spec.constants.push(constant);
    }
    for class in overlay.classes {
        let Some(target) = spec.classes.iter_mut().find(|c| c.name == class.name) else {
            spec.classes.push(class);
            continue;
        };
        if target.index != class.index {
            return Err(format!(
                "overlay gives class {:?} another index",
                class.name
            ));
        }
        for method in class.methods {
            match target.methods.iter_mut().find(|m| m.name == method.name) {
                Some(existing) => {
                    if existing.index != method.index {
                        return Err(format!(
                            "overlay gives {}.{} another index",
                            class.name, method.name
                        ));
                    }
                    if !method.fields.is_empty() {
                        return Err(format!(
                            "overlay may not change the fields of {}.{}",
                            class.name, method.name
                        ));
                    }
                    existing.synchronous |= method.synchronous;
                    existing.content |= method.content;
                    for r in method.responses {
                        if !existing.responses.contains(&r) {
                            existing.responses.push(r);
                        }
                    }
                    for c in method.chassis {
                        if !existing.chassis.contains(&c) {
                            existing.chassis.push(c);
                        }
                    }
                }
                None => target.methods.push(method),
            }
        }
        target.methods.sort_by_key(|m| m.index);
    }
    check(&spec)?;
    Ok(spec)
}

/// Consistency checks the generated code relies on.
fn check(spec: &Spec) -> Result<(), String> {
    for class in &spec.classes {
        for (i, m) in class.methods.iter().enumerate() {
            if class.methods[..i].iter().any(|o| o.index == m.index) {
                return Err(format!("{}.{}: duplicate method index", class.name, m.name));
            }
            for r in &m.responses {
                if !class.methods.iter().any(|o| &o.name == r) {
                    return Err(format!("{}.{}: unknown response {r:?}", class.name, m.name));
                }
            }
        }
        if class.properties.len() > 15 {
            return Err(format!(
                "class {} has more properties than one flags word holds",
                class.name
            ));
        }
    }
    Ok(())
}
