//! Client→tether stamps on connections that opted in to the upstream
//! guarantee (docs/PROTOCOL.md §12): the same forms as the downstream
//! `prefix` stamp, read back. tether strips the stamp and forwards the
//! payload byte for byte, with the same opcode.

use bytes::{Buf, Bytes};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Digits a u64 seq has at most.
const MAX_DIGITS: usize = 20;

/// A client data message that does not carry a valid seq stamp (close 4003).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadStamp {
    /// Text that does not start with `<digits>:`.
    #[error("text message without a \"<seq>:\" stamp")]
    Text,
    /// Binary shorter than its 8-byte seq.
    #[error("binary message shorter than its 8-byte seq")]
    Binary,
    /// Seq 0, or a decimal seq with a leading zero (seqs start at 1 and
    /// have one spelling, so a resend is recognised as the same message).
    #[error("seq 0 or a seq with a leading zero")]
    Spelling,
}

/// Splits a stamped data message into its seq and the message to forward.
pub(crate) fn unstamp(msg: Message) -> Result<(u64, Message), BadStamp> {
    match msg {
        Message::Text(t) => {
            let (seq, skip) = text_seq(t.as_bytes())?;
            // Advanced, not sliced: a slice would take and drop a reference
            // to the shared read buffer per message.
            let mut rest = Bytes::from(t);
            rest.advance(skip);
            // SAFETY: `rest` is the tail of a `Utf8Bytes` after ASCII digits
            // and ':', so it starts at a character boundary and is UTF-8.
            // (Checking again cost ~1 % of tether's CPU at 64 B.)
            let rest = unsafe { Utf8Bytes::from_bytes_unchecked(rest) };
            Ok((seq, Message::Text(rest)))
        }
        Message::Binary(b) => {
            let head: [u8; 8] = b.get(..8).and_then(|h| h.try_into().ok()).ok_or(BadStamp::Binary)?;
            let seq = u64::from_be_bytes(head);
            if seq == 0 {
                return Err(BadStamp::Spelling);
            }
            let mut rest = b;
            rest.advance(8);
            Ok((seq, Message::Binary(rest)))
        }
        // Only data messages are stamped; the reader never passes others.
        other => Ok((0, other)),
    }
}

/// The seq of a text stamp and the bytes it takes, `:` included.
fn text_seq(b: &[u8]) -> Result<(u64, usize), BadStamp> {
    let digits = b.iter().take(MAX_DIGITS + 1).take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > MAX_DIGITS || b.get(digits) != Some(&b':') {
        return Err(BadStamp::Text);
    }
    if b[0] == b'0' {
        return Err(BadStamp::Spelling);
    }
    // Digits only, so a fold; more than fits a u64 is not a seq.
    let seq = b[..digits]
        .iter()
        .try_fold(0u64, |n, c| n.checked_mul(10)?.checked_add(u64::from(c - b'0')))
        .ok_or(BadStamp::Text)?;
    Ok((seq, digits + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_binary_stamps() {
        assert_eq!(unstamp(Message::text("17:hello")), Ok((17, Message::text("hello"))));
        assert_eq!(unstamp(Message::text("1:")), Ok((1, Message::text(""))));
        assert_eq!(unstamp(Message::text("2:3:x")), Ok((2, Message::text("3:x"))));
        assert_eq!(unstamp(Message::text("9:\u{e9}t\u{e9}")), Ok((9, Message::text("\u{e9}t\u{e9}"))));
        let max = format!("{}:z", u64::MAX);
        assert_eq!(unstamp(Message::text(max)), Ok((u64::MAX, Message::text("z"))));
        let mut b = 258u64.to_be_bytes().to_vec();
        b.push(1);
        assert_eq!(unstamp(Message::binary(b)), Ok((258, Message::binary(vec![1u8]))));
        assert_eq!(unstamp(Message::binary(5u64.to_be_bytes().to_vec())), Ok((5, Message::binary(Vec::<u8>::new()))));
    }

    #[test]
    fn refusals() {
        for t in ["hello", ":x", "12", "-1:x", "+1:x", " 1:x", "#{\"type\":\"ack\"}", "18446744073709551616:x", ""] {
            assert_eq!(unstamp(Message::text(t)), Err(BadStamp::Text), "{t:?}");
        }
        assert_eq!(unstamp(Message::text("012:x")), Err(BadStamp::Spelling));
        assert_eq!(unstamp(Message::text("0:x")), Err(BadStamp::Spelling));
        assert_eq!(unstamp(Message::text("123456789012345678901:x")), Err(BadStamp::Text));
        assert_eq!(unstamp(Message::binary(vec![0u8; 7])), Err(BadStamp::Binary));
        assert_eq!(unstamp(Message::binary(vec![0u8; 9])), Err(BadStamp::Spelling));
    }
}
