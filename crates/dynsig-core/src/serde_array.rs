//! Serde for fixed-size arrays longer than the 32 elements serde supports out of the box
//! (detector histograms, HyperLogLog registers), for checkpoints: `#[serde(with =
//! "crate::serde_array")]`. An array is written as a sequence and must read back with
//! exactly its length; [`bytes`] writes a byte array as one byte string instead (a
//! HyperLogLog's 1 KiB in one call rather than 1024).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub fn serialize<S, T, const N: usize>(array: &[T; N], serializer: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    T: Serialize,
{
    serializer.collect_seq(array)
}

pub fn deserialize<'de, D, T, const N: usize>(deserializer: D) -> Result<[T; N], D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let items = Vec::<T>::deserialize(deserializer)?;
    let len = items.len();
    items
        .try_into()
        .map_err(|_| D::Error::invalid_length(len, &format!("an array of {N}").as_str()))
}

/// `#[serde(with = "crate::serde_array::bytes")]` for `[u8; N]`.
pub mod bytes {
    use serde::de::{Error as _, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(
        array: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(array)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        struct ByteArray<const N: usize>;
        impl<const N: usize> Visitor<'_> for ByteArray<N> {
            type Value = [u8; N];
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{N} bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<[u8; N], E> {
                v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<[u8; N], E> {
                self.visit_bytes(&v)
            }
        }
        deserializer
            .deserialize_bytes(ByteArray::<N>)
            .map_err(D::Error::custom)
    }
}
