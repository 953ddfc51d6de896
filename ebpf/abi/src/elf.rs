//! Just enough of ELF64 (little-endian, as clang emits for `-target bpf` on x86) to find
//! a section by name and the global functions of a section: what the BTF check and the
//! loader need from the datapath object.

use std::fmt;

/// Why the object could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfError {
    /// Not a little-endian ELF64 file.
    NotElf64,
    /// A header or table points outside the file.
    Truncated { what: &'static str },
    /// A required section is absent.
    MissingSection { name: String },
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::NotElf64 => write!(f, "not a little-endian ELF64 object"),
            ElfError::Truncated { what } => write!(f, "truncated ELF object ({what})"),
            ElfError::MissingSection { name } => write!(f, "section {name} missing"),
        }
    }
}

impl std::error::Error for ElfError {}

const SHT_SYMTAB: u32 = 2;
const STT_FUNC: u8 = 2;
const STB_GLOBAL: u8 = 1;

/// One section header.
#[derive(Debug, Clone)]
pub struct Section<'a> {
    pub name: String,
    pub kind: u32,
    pub link: u32,
    pub data: &'a [u8],
}

/// A global function and the name of the section holding it (a BPF program).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    pub section: String,
}

pub(crate) fn rd_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
pub(crate) fn rd_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn rd_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// A NUL-terminated string at `at` of a string table.
pub(crate) fn c_str(table: &[u8], at: usize) -> Option<String> {
    let rest = table.get(at..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// Every section of an ELF64 little-endian object.
pub fn sections(obj: &[u8]) -> Result<Vec<Section<'_>>, ElfError> {
    if obj.get(0..4) != Some(b"\x7fELF") || obj.get(4) != Some(&2) || obj.get(5) != Some(&1) {
        return Err(ElfError::NotElf64);
    }
    let hdr = |what| ElfError::Truncated { what };
    let shoff = rd_u64(obj, 0x28).ok_or(hdr("e_shoff"))? as usize;
    let shentsize = rd_u16(obj, 0x3a).ok_or(hdr("e_shentsize"))? as usize;
    let shnum = rd_u16(obj, 0x3c).ok_or(hdr("e_shnum"))? as usize;
    let shstrndx = rd_u16(obj, 0x3e).ok_or(hdr("e_shstrndx"))? as usize;
    let raw = |i: usize| -> Result<(u32, u32, u32, &[u8]), ElfError> {
        let at = i
            .checked_mul(shentsize)
            .and_then(|o| o.checked_add(shoff))
            .ok_or(hdr("section header offset"))?;
        let name = rd_u32(obj, at).ok_or(hdr("sh_name"))?;
        let kind = rd_u32(obj, at + 4).ok_or(hdr("sh_type"))?;
        let off = rd_u64(obj, at + 24).ok_or(hdr("sh_offset"))? as usize;
        let size = rd_u64(obj, at + 32).ok_or(hdr("sh_size"))? as usize;
        let link = rd_u32(obj, at + 40).ok_or(hdr("sh_link"))?;
        // SHT_NOBITS (8) occupies no file space.
        let data = if kind == 8 {
            &[][..]
        } else {
            off.checked_add(size)
                .and_then(|end| obj.get(off..end))
                .ok_or(hdr("section data"))?
        };
        Ok((name, kind, link, data))
    };
    let (_, _, _, names) = raw(shstrndx)?;
    (0..shnum)
        .map(|i| {
            let (name, kind, link, data) = raw(i)?;
            Ok(Section {
                name: c_str(names, name as usize).ok_or(hdr("section name"))?,
                kind,
                link,
                data,
            })
        })
        .collect()
}

/// The data of the section called `name`.
pub fn section<'a>(obj: &'a [u8], name: &str) -> Result<&'a [u8], ElfError> {
    sections(obj)?
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.data)
        .ok_or_else(|| ElfError::MissingSection {
            name: name.to_string(),
        })
}

/// Global functions with the section each lives in, in symbol-table order. In a BPF object
/// these are the programs; the section name says the program kind and hook.
pub fn global_functions(obj: &[u8]) -> Result<Vec<Function>, ElfError> {
    let secs = sections(obj)?;
    let symtab =
        secs.iter()
            .find(|s| s.kind == SHT_SYMTAB)
            .ok_or_else(|| ElfError::MissingSection {
                name: ".symtab".into(),
            })?;
    let strtab = secs
        .get(symtab.link as usize)
        .ok_or(ElfError::Truncated { what: "sh_link" })?;
    let mut out = Vec::new();
    for sym in symtab.data.chunks_exact(24) {
        let info = sym[4];
        if info & 0xf != STT_FUNC || info >> 4 != STB_GLOBAL {
            continue;
        }
        let name = rd_u32(sym, 0).ok_or(ElfError::Truncated { what: "st_name" })?;
        let shndx = rd_u16(sym, 6).ok_or(ElfError::Truncated { what: "st_shndx" })?;
        let (Some(name), Some(sec)) = (c_str(strtab.data, name as usize), secs.get(shndx as usize))
        else {
            continue;
        };
        out.push(Function {
            name,
            section: sec.name.clone(),
        });
    }
    Ok(out)
}
