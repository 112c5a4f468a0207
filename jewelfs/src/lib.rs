//! The JewelFS client (see the crate description).
