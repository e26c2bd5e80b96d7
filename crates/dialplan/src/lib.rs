//! Call flows: the dialplan file model and its sans-IO interpreter.

pub mod graph;
pub mod interpreter;
pub mod model;
pub mod say;

pub use interpreter::{Arg, Args, CallAction, CallEvent, Interpreter, PromptRef};
pub use model::{Catalog, Dialplan, DialplanError, Dialplans, Op};
