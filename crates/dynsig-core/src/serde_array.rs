//! Serde for fixed-size arrays longer than the 32 elements serde supports out of the box
//! (the anomaly detectors' histograms), for checkpoints: `#[serde(with =
//! "crate::serde_array")]`. An array is written as a sequence and must read back with
//! exactly its length.

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
