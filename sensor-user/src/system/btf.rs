//! Just enough of a BTF reader to find struct member offsets in the running
//! kernel (/sys/kernel/btf/vmlinux).
//!
//! The kernel programs are written in Rust without CO-RE relocations, so the few
//! kernel-struct offsets they need (to read the executable's inode at exec) are
//! looked up here and handed to them through the CONFIG map. aya 0.14 parses BTF
//! but does not expose type lookups, hence this small reader (format:
//! Documentation/bpf/btf.rst).

use std::collections::HashMap;

/// BTF kinds we need to tell apart.
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// Parse failures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data (bad magic or truncated header)")]
    BadHeader,
    #[error("BTF type section is truncated at type {0}")]
    Truncated(u32),
    #[error("unknown BTF kind {kind} at type {id}")]
    UnknownKind { kind: u32, id: u32 },
}

#[derive(Debug, Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset from the start of the struct.
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name_off: u32,
    /// Referenced type for typedef/const/volatile/… (`size_or_type`).
    type_ref: u32,
    members: Vec<Member>,
}

/// Parsed BTF: types by id and the string table.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, Vec<u32>>,
}

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    data.get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl Btf {
    /// Parses little-endian BTF (what x86_64 and arm64 kernels expose).
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let magic = data.get(0..2).ok_or(BtfError::BadHeader)?;
        if magic != [0x9f, 0xeb] {
            return Err(BtfError::BadHeader);
        }
        let hdr_len = u32_at(data, 4).ok_or(BtfError::BadHeader)? as usize;
        let type_off = u32_at(data, 8).ok_or(BtfError::BadHeader)? as usize;
        let type_len = u32_at(data, 12).ok_or(BtfError::BadHeader)? as usize;
        let str_off = u32_at(data, 16).ok_or(BtfError::BadHeader)? as usize;
        let str_len = u32_at(data, 20).ok_or(BtfError::BadHeader)? as usize;
        let types_start = hdr_len + type_off;
        let type_data = data
            .get(types_start..types_start + type_len)
            .ok_or(BtfError::BadHeader)?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::BadHeader)?
            .to_vec();

        // Type id 0 is "void".
        let mut types = vec![Type {
            kind: 0,
            name_off: 0,
            type_ref: 0,
            members: Vec::new(),
        }];
        let mut pos = 0usize;
        while pos < type_data.len() {
            let id = types.len() as u32;
            let name_off = u32_at(type_data, pos).ok_or(BtfError::Truncated(id))?;
            let info = u32_at(type_data, pos + 4).ok_or(BtfError::Truncated(id))?;
            let size_or_type = u32_at(type_data, pos + 8).ok_or(BtfError::Truncated(id))?;
            pos += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kflag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                0 => 0,
                1 => 4,  // INT
                2 => 0,  // PTR
                3 => 12, // ARRAY
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = pos + i * 12;
                        let name_off = u32_at(type_data, m).ok_or(BtfError::Truncated(id))?;
                        let type_id = u32_at(type_data, m + 4).ok_or(BtfError::Truncated(id))?;
                        let raw = u32_at(type_data, m + 8).ok_or(BtfError::Truncated(id))?;
                        let bit_offset = if kflag { raw & 0x00ff_ffff } else { raw };
                        members.push(Member {
                            name_off,
                            type_id,
                            bit_offset,
                        });
                    }
                    vlen * 12
                }
                6 => vlen * 8, // ENUM
                7 => 0,        // FWD
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT => 0,
                12 => 0,         // FUNC
                13 => vlen * 8,  // FUNC_PROTO
                14 => 4,         // VAR
                15 => vlen * 12, // DATASEC
                16 => 0,         // FLOAT
                17 => 4,         // DECL_TAG
                KIND_TYPE_TAG => 0,
                19 => vlen * 12, // ENUM64
                kind => return Err(BtfError::UnknownKind { kind, id }),
            };
            pos += extra;
            types.push(Type {
                kind,
                name_off,
                type_ref: size_or_type,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            structs_by_name: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT || t.kind == KIND_UNION {
                let name = btf.name(t.name_off).to_owned();
                if !name.is_empty() {
                    btf.structs_by_name.entry(name).or_default().push(id as u32);
                }
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let start = off as usize;
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedef/const/volatile/restrict/type-tag to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.type_ref
                }
                _ => return Some(t),
            }
        }
        None
    }

    fn find_in(&self, t: &Type, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            let name = self.name(m.name_off);
            if name == member {
                return Some(m.bit_offset);
            }
            if name.is_empty() {
                // An anonymous struct/union member: its fields belong to us.
                if let Some(inner) = self.resolve(m.type_id)
                    && (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
                    && let Some(off) = self.find_in(inner, member, depth + 1)
                {
                    return Some(m.bit_offset + off);
                }
            }
        }
        None
    }

    /// Byte offset of `member` in `struct name` (looking through anonymous
    /// struct/union members), or `None` when either is unknown or the member is
    /// a bitfield not on a byte boundary.
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let ids = self.structs_by_name.get(name)?;
        ids.iter().find_map(|id| {
            let t = &self.types[*id as usize];
            self.find_in(t, member, 0)
                .filter(|bits| bits % 8 == 0)
                .map(|bits| bits / 8)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF with: 1 = int, 2 = struct inner { int b; }, 3 = struct outer
    /// { int a; (anonymous) struct inner; }, at byte offsets 0 / 8.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0b\0inner\0outer\0a\0".to_vec();
        let s = |name: &str| {
            strings
                .windows(name.len() + 1)
                .position(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0)
                .unwrap() as u32
        };
        let mut types = Vec::new();
        let mut push = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // int
        push(s("int"));
        push(1 << 24);
        push(4);
        push(32);
        // struct inner { int b @0 }
        push(s("inner"));
        push((4 << 24) | 1);
        push(4);
        push(s("b"));
        push(1);
        push(0);
        // struct outer { int a @0; anon inner @64 bits }
        push(s("outer"));
        push((4 << 24) | 2);
        push(12);
        push(s("a"));
        push(1);
        push(0);
        push(0);
        push(2);
        push(64);
        let mut out = Vec::new();
        out.extend_from_slice(&[0x9f, 0xeb, 1, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), Some(0));
        assert_eq!(btf.member_offset("outer", "b"), Some(8));
        assert_eq!(btf.member_offset("outer", "c"), None);
        assert_eq!(btf.member_offset("nope", "a"), None);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(
            Btf::parse(b"hello world, not btf").err(),
            Some(BtfError::BadHeader)
        );
    }

    #[test]
    fn running_kernel_has_the_offsets_we_need() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            return;
        };
        let btf = Btf::parse(&data).unwrap();
        for (s, m) in [
            ("task_struct", "mm"),
            ("mm_struct", "exe_file"),
            ("file", "f_inode"),
            ("inode", "i_ino"),
            ("inode", "i_sb"),
            ("super_block", "s_dev"),
        ] {
            assert!(btf.member_offset(s, m).is_some(), "{s}.{m}");
        }
    }
}
