//! The wire protocol: messages, framing and error codes. Pure code with no I/O policy, shared
//! by every component.

pub mod budget;
pub mod error;
pub mod frame;
pub mod kept;
pub mod message;

pub use error::{err, ErrorCode, WireError, MOVING_WRITER, NOT_APPLIED_TRY_AGAIN};
pub use frame::{decode, encode, Connection, Frame, FrameError};
pub use message::*;
