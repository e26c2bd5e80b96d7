//! The edges: each adapter turns a way of receiving calls into the same call events.

pub mod asterisk;
pub mod edge;
pub mod freeswitch;
pub mod sip;
