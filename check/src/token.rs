//! What the checker reads in a token (docs/PROTOCOL.md §8): the session it
//! names and its generation. Tokens rotate on every resume, so "the same
//! session" is not "the same token" any more.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// The session id and generation of a v3/v4 token (v1/v2: generation 0);
/// `None` if it is not a token tether mints.
pub fn parts(token: &str) -> Option<([u8; 16], u32)> {
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    let session: [u8; 16] = raw.get(9..25)?.try_into().ok()?;
    let generation = match raw.first()? {
        1 | 2 => 0,
        3 | 4 => u32::from_be_bytes(raw.get(25..29)?.try_into().ok()?),
        _ => return None,
    };
    Some((session, generation))
}

/// True if `next` is the token a resume with `old` must be answered with:
/// the same session, one generation on.
pub fn is_next(old: Option<&str>, next: &str) -> bool {
    match (old.and_then(parts), parts(next)) {
        (Some((a, g)), Some((b, h))) => a == b && h == g.saturating_add(1),
        _ => false,
    }
}

/// True if both tokens name the same session.
pub fn same_session(old: Option<&str>, next: &str) -> bool {
    match (old.and_then(parts), parts(next)) {
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A v3 token of `session` and `generation` (the MAC is not checked here).
    pub(crate) fn v3(session: [u8; 16], generation: u32) -> String {
        let mut raw = vec![3u8];
        raw.extend_from_slice(&[0; 8]);
        raw.extend_from_slice(&session);
        raw.extend_from_slice(&generation.to_be_bytes());
        raw.extend_from_slice(&[0xaa; 16]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    #[test]
    fn next_and_same_session() {
        let (t0, t1, t2) = (v3([1; 16], 0), v3([1; 16], 1), v3([1; 16], 2));
        let other = v3([2; 16], 1);
        assert_eq!(parts(&t1), Some(([1; 16], 1)));
        assert!(is_next(Some(&t0), &t1) && is_next(Some(&t1), &t2));
        assert!(!is_next(Some(&t0), &t2) && !is_next(Some(&t1), &t1) && !is_next(Some(&t0), &other));
        assert!(!is_next(None, &t1) && !is_next(Some("not-a-token"), &t1));
        assert!(same_session(Some(&t0), &t2) && !same_session(Some(&t0), &other));
        // A v1 token (before rotation) is generation 0.
        let mut v1 = URL_SAFE_NO_PAD.decode(&t0).unwrap();
        v1[0] = 1;
        v1.drain(25..29);
        assert_eq!(parts(&URL_SAFE_NO_PAD.encode(v1)), Some(([1; 16], 0)));
    }
}
