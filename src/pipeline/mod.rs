//! The stages an event passes, in order: the Kafka [`source`] polls records on its own
//! thread and stamps them with the partition's [`ownership`] generation; decoding (the
//! contract crate) turns each into an event or a rejection; rejections go to the
//! [`dead_letter`] stage, events to the Redis [`sink`]; both acknowledge the
//! [`record`]s back to the source, which commits only what is done.

pub mod dead_letter;
pub mod decode;
pub mod ownership;
pub mod record;
pub mod sink;
pub mod source;
