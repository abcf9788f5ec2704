//! Protobuf messages of dynsig's topics. `proto/dynsig/v1` is the source of truth;
//! the JSON encoding used on the same topics mirrors these field names.

pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/dynsig.v1.rs"));
}
