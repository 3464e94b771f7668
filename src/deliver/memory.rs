//! An in-memory transport that records what it was given, with failures
//! that tests can script per address.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::{Outgoing, SendError, Transport};

#[derive(Default)]
pub struct MemoryTransport {
    sent: Mutex<Vec<Outgoing>>,
    scripted: Mutex<HashMap<String, VecDeque<SendError>>>,
}

impl MemoryTransport {
    pub fn new() -> MemoryTransport {
        MemoryTransport::default()
    }

    /// The next send to `address` fails with `error` (queued per address).
    pub fn fail_next(&self, address: &str, error: SendError) {
        self.scripted
            .lock()
            .unwrap()
            .entry(address.to_string())
            .or_default()
            .push_back(error);
    }

    /// Messages accepted so far, in order.
    pub fn messages(&self) -> Vec<Outgoing> {
        self.sent.lock().unwrap().clone()
    }
}

impl Transport for MemoryTransport {
    fn describe(&self) -> String {
        "memory (tests)".into()
    }

    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        let scripted = self
            .scripted
            .lock()
            .unwrap()
            .get_mut(&message.to)
            .and_then(VecDeque::pop_front);
        if let Some(e) = scripted {
            return Err(e);
        }
        self.sent.lock().unwrap().push(message.clone());
        Ok(())
    }
}
