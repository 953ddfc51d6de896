//! The Rust mirror's layout as data: for every ABI struct its C name, size, and each
//! field's C name, offset and size, all taken from the Rust types with `offset_of!` and
//! `size_of`. A test compares this table with the BTF of the built object
//! ([`compare`]), so a field swapped, resized or added on one side only fails.

use crate::btf::Btf;

/// One field: C name, byte offset, size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldLayout {
    pub name: String,
    pub offset: usize,
    pub size: usize,
}

/// One struct: C name, size and fields in declaration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructLayout {
    pub name: String,
    pub size: usize,
    pub fields: Vec<FieldLayout>,
}

/// Size of a field, from an accessor closure (`|s: T| s.field`): the closure is never
/// called, only its return type is used.
#[doc(hidden)]
pub const fn field_size<T, F>(_: fn(T) -> F) -> usize {
    size_of::<F>()
}

/// Builds a [`StructLayout`] of a `#[repr(C)]` type: `layout!(CtKey, "ct_key", [saddr,
/// sport_be as "sport", ...])`; `as` gives the C name of a field the mirror renames.
#[macro_export]
macro_rules! layout {
    ($ty:ty, $c:literal, [$($field:ident $(as $cname:literal)?),* $(,)?]) => {
        $crate::layout::StructLayout {
            name: $c.to_string(),
            size: ::core::mem::size_of::<$ty>(),
            fields: vec![$(
                $crate::layout::FieldLayout {
                    name: $crate::layout!(@name $field $($cname)?).to_string(),
                    offset: ::core::mem::offset_of!($ty, $field),
                    size: $crate::layout::field_size(|s: $ty| s.$field),
                }
            ),*],
        }
    };
    (@name $field:ident $cname:literal) => { $cname };
    (@name $field:ident) => { stringify!($field) };
}

/// Every difference between the mirror and the object's BTF, one line each; empty when
/// they agree. Compared: the struct exists, its size, the field list (names, in order) and
/// every field's offset and size.
pub fn compare(mirror: &[StructLayout], btf: &Btf) -> Vec<String> {
    let mut out = Vec::new();
    for m in mirror {
        let Some(c) = btf.struct_layout(&m.name) else {
            out.push(format!("struct {}: not in the object's BTF", m.name));
            continue;
        };
        if c.size != m.size {
            out.push(format!(
                "struct {}: size {} in C, {} in Rust",
                m.name, c.size, m.size
            ));
        }
        let names = |l: &StructLayout| l.fields.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
        if names(&c) != names(m) {
            out.push(format!(
                "struct {}: fields {:?} in C, {:?} in Rust",
                m.name,
                names(&c),
                names(m)
            ));
        }
        for f in &m.fields {
            let Some(cf) = c.fields.iter().find(|cf| cf.name == f.name) else {
                continue;
            };
            if (cf.offset, cf.size) != (f.offset, f.size) {
                out.push(format!(
                    "{}.{}: offset {} size {} in C, offset {} size {} in Rust",
                    m.name, f.name, cf.offset, cf.size, f.offset, f.size
                ));
            }
        }
    }
    out
}
