//! The edges: each adapter turns a way of receiving calls into the same call events.

pub mod sip;
