//! A small reader of the BTF (BPF Type Format) section of the datapath object: struct
//! layouts, enum values and BTF-defined map definitions. It is what lets a test compare the
//! Rust mirror with what clang actually laid out, and lets the loader take map and program
//! definitions from the object instead of a hand-copied table.
//!
//! Format: `include/uapi/linux/btf.h` and Documentation/bpf/btf.rst in the kernel tree.

use std::fmt;

use crate::elf::{self, ElfError, c_str, rd_u32};
use crate::layout::{FieldLayout, StructLayout};

/// Why the BTF could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BtfError {
    Elf {
        source: ElfError,
    },
    BadMagic,
    Truncated {
        what: &'static str,
    },
    UnknownKind {
        kind: u32,
        id: u32,
    },
    /// A map definition in `.maps` is not shaped like libbpf's `__uint`/`__type` macros.
    BadMapDef {
        map: String,
        detail: String,
    },
}

impl fmt::Display for BtfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BtfError::Elf { source } => write!(f, "reading the object: {source}"),
            BtfError::BadMagic => write!(f, "not a BTF section (bad magic)"),
            BtfError::Truncated { what } => write!(f, "truncated BTF ({what})"),
            BtfError::UnknownKind { kind, id } => write!(f, "unknown BTF kind {kind} (type {id})"),
            BtfError::BadMapDef { map, detail } => write!(f, "map {map}: {detail}"),
        }
    }
}

impl std::error::Error for BtfError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BtfError::Elf { source } => Some(source),
            _ => None,
        }
    }
}

/// A struct or union member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub type_id: u32,
    pub bit_offset: u32,
    /// Non-zero for a bitfield.
    pub bitfield_size: u32,
}

/// One BTF type (the kinds the datapath uses keep their details; the rest only a name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    Int {
        name: String,
        size: u32,
    },
    Ptr {
        target: u32,
    },
    Array {
        elem: u32,
        nelems: u32,
    },
    Struct {
        name: String,
        size: u32,
        members: Vec<Member>,
        union: bool,
    },
    Enum {
        name: String,
        size: u32,
        values: Vec<(String, i64)>,
    },
    Typedef {
        name: String,
        target: u32,
    },
    /// const, volatile, restrict, type tags: the same layout as the target.
    Modifier {
        target: u32,
    },
    Var {
        name: String,
        target: u32,
    },
    Datasec {
        name: String,
        vars: Vec<u32>,
    },
    Float {
        name: String,
        size: u32,
    },
    /// fwd, func, func_proto, decl tag: no layout.
    Other {
        name: String,
    },
}

/// A BTF-defined map (`struct { __uint(type, ...); ... } name SEC(".maps")`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDef {
    pub name: String,
    /// `BPF_MAP_TYPE_*`.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    /// Name of the key type as declared (`ct_key`, `__u32`); `None` without `__type(key)`.
    pub key_type: Option<String>,
    pub value_type: Option<String>,
    pub max_entries: u32,
    pub flags: u32,
    /// `LIBBPF_PIN_*`.
    pub pinning: u32,
}

/// The parsed type section.
#[derive(Debug, Clone)]
pub struct Btf {
    /// Index = type id - 1 (id 0 is void).
    types: Vec<Type>,
}

const MAGIC: u16 = 0xeb9f;

impl Btf {
    /// Parses the `.BTF` section of an ELF object.
    pub fn from_object(obj: &[u8]) -> Result<Btf, BtfError> {
        let data = elf::section(obj, ".BTF").map_err(|source| BtfError::Elf { source })?;
        Btf::parse(data)
    }

    /// Parses a raw `.BTF` section.
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let t = |what| BtfError::Truncated { what };
        if elf::rd_u16(data, 0) != Some(MAGIC) {
            return Err(BtfError::BadMagic);
        }
        let hdr_len = rd_u32(data, 4).ok_or(t("hdr_len"))? as usize;
        let type_off = rd_u32(data, 8).ok_or(t("type_off"))? as usize;
        let type_len = rd_u32(data, 12).ok_or(t("type_len"))? as usize;
        let str_off = rd_u32(data, 16).ok_or(t("str_off"))? as usize;
        let str_len = rd_u32(data, 20).ok_or(t("str_len"))? as usize;
        let types = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(t("type section"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(t("string section"))?;
        let name = |off: u32| c_str(strings, off as usize).unwrap_or_default();
        let u = |at: usize, what| rd_u32(types, at).ok_or(t(what));

        let mut out = Vec::new();
        let mut at = 0;
        while at < types.len() {
            let id = out.len() as u32 + 1;
            let name_off = u(at, "name_off")?;
            let info = u(at + 4, "info")?;
            let size_or_type = u(at + 8, "size")?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                1 => {
                    at += 4;
                    Type::Int {
                        name: name(name_off),
                        size: size_or_type,
                    }
                }
                2 => Type::Ptr {
                    target: size_or_type,
                },
                3 => {
                    let ty = Type::Array {
                        elem: u(at, "array type")?,
                        nelems: u(at + 8, "array nelems")?,
                    };
                    at += 12;
                    ty
                }
                4 | 5 => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let off = u(at + 8, "member offset")?;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (off & 0x00ff_ffff, off >> 24)
                        } else {
                            (off, 0)
                        };
                        members.push(Member {
                            name: name(u(at, "member name")?),
                            type_id: u(at + 4, "member type")?,
                            bit_offset,
                            bitfield_size,
                        });
                        at += 12;
                    }
                    Type::Struct {
                        name: name(name_off),
                        size: size_or_type,
                        members,
                        union: kind == 5,
                    }
                }
                6 | 19 => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let n = name(u(at, "enum name")?);
                        let lo = u(at + 4, "enum value")?;
                        let v = if kind == 6 {
                            at += 8;
                            if kind_flag {
                                i64::from(lo)
                            } else {
                                i64::from(lo as i32)
                            }
                        } else {
                            let hi = u(at + 8, "enum64 value")?;
                            at += 12;
                            ((u64::from(hi) << 32) | u64::from(lo)) as i64
                        };
                        values.push((n, v));
                    }
                    Type::Enum {
                        name: name(name_off),
                        size: size_or_type,
                        values,
                    }
                }
                8 => Type::Typedef {
                    name: name(name_off),
                    target: size_or_type,
                },
                9 | 10 | 11 | 18 => Type::Modifier {
                    target: size_or_type,
                },
                7 | 12 => Type::Other {
                    name: name(name_off),
                },
                13 => {
                    at += 8 * vlen;
                    Type::Other {
                        name: name(name_off),
                    }
                }
                14 => {
                    at += 4;
                    Type::Var {
                        name: name(name_off),
                        target: size_or_type,
                    }
                }
                15 => {
                    let mut vars = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        vars.push(u(at, "datasec var")?);
                        at += 12;
                    }
                    Type::Datasec {
                        name: name(name_off),
                        vars,
                    }
                }
                16 => Type::Float {
                    name: name(name_off),
                    size: size_or_type,
                },
                17 => {
                    at += 4;
                    Type::Other {
                        name: name(name_off),
                    }
                }
                kind => return Err(BtfError::UnknownKind { kind, id }),
            };
            out.push(ty);
        }
        Ok(Btf { types: out })
    }

    /// The type with this id (`None` for void and out-of-range ids).
    pub fn get(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// Follows typedefs and modifiers to the underlying type id.
    pub fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.get(id) {
                Some(Type::Typedef { target, .. } | Type::Modifier { target }) => id = *target,
                _ => break,
            }
        }
        id
    }

    /// Size in bytes of a type (`None` for void, functions, forward declarations, and
    /// malformed type graphs: cycles, sizes that overflow).
    pub fn size_of(&self, id: u32) -> Option<u32> {
        self.size_at_depth(id, 0)
    }

    fn size_at_depth(&self, id: u32, depth: u32) -> Option<u32> {
        if depth > 32 {
            return None;
        }
        match self.get(self.resolve(id))? {
            Type::Int { size, .. }
            | Type::Struct { size, .. }
            | Type::Enum { size, .. }
            | Type::Float { size, .. } => Some(*size),
            Type::Ptr { .. } => Some(8),
            Type::Array { elem, nelems } => {
                self.size_at_depth(*elem, depth + 1)?.checked_mul(*nelems)
            }
            _ => None,
        }
    }

    /// The declared name of a type: a typedef's or struct's own name, or for a pointer or
    /// modifier the name of what it points at.
    pub fn type_name(&self, id: u32) -> Option<String> {
        let mut id = id;
        for _ in 0..32 {
            match self.get(id)? {
                Type::Int { name, .. }
                | Type::Struct { name, .. }
                | Type::Enum { name, .. }
                | Type::Typedef { name, .. }
                | Type::Float { name, .. } => return Some(name.clone()),
                Type::Modifier { target } => id = *target,
                _ => return None,
            }
        }
        None
    }

    fn find_struct(&self, name: &str) -> Option<(u32, &[Member])> {
        self.types.iter().find_map(|t| match t {
            Type::Struct {
                name: n,
                size,
                members,
                ..
            } if n == name => Some((*size, members.as_slice())),
            _ => None,
        })
    }

    /// The layout of `struct name`: size, and each member's byte offset and size, in
    /// declaration order. Bitfields are reported with their bit offset / 8 and size 0.
    pub fn struct_layout(&self, name: &str) -> Option<StructLayout> {
        let (size, members) = self.find_struct(name)?;
        Some(StructLayout {
            name: name.to_string(),
            size: size as usize,
            fields: members
                .iter()
                .map(|m| FieldLayout {
                    name: m.name.clone(),
                    offset: (m.bit_offset / 8) as usize,
                    size: if m.bitfield_size != 0 {
                        0
                    } else {
                        self.size_of(m.type_id).unwrap_or(0) as usize
                    },
                })
                .collect(),
        })
    }

    /// The values of `enum name` (named enums only).
    pub fn enum_values(&self, name: &str) -> Option<&[(String, i64)]> {
        self.types.iter().find_map(|t| match t {
            Type::Enum {
                name: n, values, ..
            } if n == name => Some(values.as_slice()),
            _ => None,
        })
    }

    /// Every map of the `.maps` section, in declaration order.
    pub fn maps(&self) -> Result<Vec<MapDef>, BtfError> {
        let Some(vars) = self.types.iter().find_map(|t| match t {
            Type::Datasec { name, vars } if name == ".maps" => Some(vars),
            _ => None,
        }) else {
            return Ok(Vec::new());
        };
        vars.iter().map(|&v| self.map_def(v)).collect()
    }

    fn map_def(&self, var: u32) -> Result<MapDef, BtfError> {
        let (name, target) = match self.get(var) {
            Some(Type::Var { name, target }) => (name.clone(), *target),
            _ => {
                return Err(BtfError::BadMapDef {
                    map: format!("type {var}"),
                    detail: "not a variable".into(),
                });
            }
        };
        let bad = |detail: String| BtfError::BadMapDef {
            map: name.clone(),
            detail,
        };
        let Some(Type::Struct { members, .. }) = self.get(self.resolve(target)) else {
            return Err(bad("definition is not a struct".into()));
        };
        let mut def = MapDef {
            name: name.clone(),
            map_type: 0,
            key_size: 0,
            value_size: 0,
            key_type: None,
            value_type: None,
            max_entries: 0,
            flags: 0,
            pinning: 0,
        };
        for m in members {
            let Some(Type::Ptr { target }) = self.get(m.type_id) else {
                return Err(bad(format!("member {} is not a pointer", m.name)));
            };
            // __uint(name, n) is `int (*name)[n]`; __type(name, T) is `T *name`.
            let uint = || match self.get(*target) {
                Some(Type::Array { nelems, .. }) => Ok(*nelems),
                _ => Err(bad(format!("member {} is not __uint", m.name))),
            };
            let sized = || {
                self.size_of(*target)
                    .ok_or_else(|| bad(format!("member {} has no size", m.name)))
            };
            match m.name.as_str() {
                "type" => def.map_type = uint()?,
                "max_entries" => def.max_entries = uint()?,
                "map_flags" => def.flags = uint()?,
                "pinning" => def.pinning = uint()?,
                "key_size" => def.key_size = uint()?,
                "value_size" => def.value_size = uint()?,
                "key" => {
                    def.key_size = sized()?;
                    def.key_type = self.type_name(*target);
                }
                "value" => {
                    def.value_size = sized()?;
                    def.value_type = self.type_name(*target);
                }
                other => return Err(bad(format!("unknown member {other}"))),
            }
        }
        Ok(def)
    }
}
