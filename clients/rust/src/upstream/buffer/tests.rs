use super::*;

type Rx = oneshot::Receiver<Result<(), UpstreamError>>;

fn buf(in_doubt: InDoubt) -> Buf {
    Buf::new(Upstream { in_doubt, ..Upstream::default() })
}

fn push(b: &mut Buf, n: usize) -> Vec<Rx> {
    (0..n).map(|_| b.try_push(Payload::Text(format!("p{}", b.entries.len() + 1))).ok().unwrap()).collect()
}

fn up(next: u64, acked: u64, conn: u64, exact: bool) -> UpWelcome {
    UpWelcome { next, acked, conn, exact }
}

fn texts(msgs: Vec<tungstenite::Message>) -> Vec<String> {
    msgs.into_iter().map(|m| m.into_text().unwrap().to_string()).collect()
}

/// `None` while pending, else the outcome (reason, seq, payload).
type Fate = Result<(), (UpstreamReason, Option<u64>, Payload)>;

fn outcome(rx: &mut Rx) -> Option<Fate> {
    rx.try_recv().ok().map(|r| r.map_err(|e| (e.reason, e.seq, e.payload)))
}

fn pending(rxs: &mut [Rx]) -> usize {
    rxs.iter_mut().map(|rx| rx.try_recv()).filter(|r| matches!(r, Err(oneshot::error::TryRecvError::Empty))).count()
}

#[test]
fn nothing_is_sent_before_a_welcome_then_seqs_start_at_next() {
    let mut b = buf(InDoubt::Report);
    let mut rx = push(&mut b, 3);
    assert!(!b.has_unsent());
    assert!(b.take(10).is_empty());
    assert!(b.welcome(false, up(1, 0, 7, true)).is_empty());
    assert!(b.has_unsent());
    assert_eq!(texts(b.take(2)), ["1:p1", "2:p2"]);
    assert_eq!(texts(b.take(2)), ["3:p3"]);
    assert!(!b.has_unsent());
    b.ack(2);
    assert_eq!(outcome(&mut rx[0]), Some(Ok(())));
    assert_eq!(outcome(&mut rx[1]), Some(Ok(())));
    assert_eq!(outcome(&mut rx[2]), None);
    let s = b.stats();
    assert_eq!((s.unacked, s.unacked_bytes, s.sent, s.acked, s.acked_seq, s.next_seq), (1, 2, 3, 2, 2, 4));
    // An old or repeated ack changes nothing.
    b.ack(1);
    assert_eq!(b.stats().acked, 2);
    b.ack(3);
    assert_eq!(outcome(&mut rx[2]), Some(Ok(())));
    assert_eq!((b.stats().unacked, b.stats().unacked_bytes), (0, 0));
}

#[test]
fn same_conn_keeps_the_accepted_and_resends_from_next() {
    let mut b = buf(InDoubt::Report);
    let mut rx = push(&mut b, 6);
    b.welcome(false, up(1, 0, 7, true));
    assert_eq!(b.take(5).len(), 5); // 1..=5 sent, p6 not yet
    b.disconnected();
    assert!(b.take(5).is_empty(), "nothing is sent between a drop and the welcome");
    // tether accepted 1..=3, wrote 1; 4 and 5 were lost in the cut.
    let report = b.welcome(false, up(4, 1, 7, true));
    assert!(report.is_empty());
    assert_eq!(outcome(&mut rx[0]), Some(Ok(())));
    assert_eq!(pending(&mut rx[1..]), 5);
    assert_eq!(texts(b.take(10)), ["4:p4", "5:p5", "6:p6"]);
    let s = b.stats();
    assert_eq!((s.resends, s.sent, s.acked, s.in_doubt, s.unacked), (2, 8, 1, 0, 5));
    b.ack(6);
    assert_eq!(pending(&mut rx), 0);
    assert_eq!(b.stats().acked, 6);
}

#[test]
fn a_welcome_can_ack_everything_sent() {
    let mut b = buf(InDoubt::Report);
    let mut rx = push(&mut b, 2);
    b.welcome(false, up(1, 0, 7, true));
    b.take(10);
    let _ = push(&mut b, 1);
    b.welcome(false, up(3, 2, 7, true));
    assert_eq!(pending(&mut rx), 0);
    assert_eq!(texts(b.take(10)), ["3:p3"]);
}

#[test]
fn changed_conn_exact_resends_what_was_never_written() {
    let mut b = buf(InDoubt::Report);
    let mut rx = push(&mut b, 5);
    b.welcome(false, up(1, 0, 7, true));
    b.take(10);
    // A drain: 1..=2 written and recorded, 3 accepted and written to the
    // old connection (acked later), 4..=5 never written.
    let report = b.welcome(false, up(4, 2, 8, true));
    assert!(report.is_empty());
    assert_eq!(pending(&mut rx), 3);
    assert_eq!(texts(b.take(10)), ["4:p4", "5:p5"]);
    assert_eq!(b.stats().conn, Some(8));
    b.ack(5);
    assert_eq!(pending(&mut rx), 0);
}

#[test]
fn changed_conn_not_exact_reports_the_doubt_and_renumbers_the_rest() {
    let mut b = buf(InDoubt::Report);
    let mut rx = push(&mut b, 5);
    b.welcome(false, up(1, 0, 7, true));
    assert_eq!(b.take(4).len(), 4);
    // kill -9: tether recorded 1 as written and 2 as accepted; 3 and 4
    // were sent on conn 7 and may have been written. p5 was never sent.
    let report = b.welcome(false, up(3, 1, 8, false));
    assert_eq!(report, [UpMessage { seq: 3, payload: "p3".into() }, UpMessage { seq: 4, payload: "p4".into() }]);
    assert_eq!(outcome(&mut rx[0]), Some(Ok(())));
    assert_eq!(outcome(&mut rx[1]), None);
    assert_eq!(outcome(&mut rx[2]), Some(Err((UpstreamReason::InDoubt, Some(3), "p3".into()))));
    assert_eq!(outcome(&mut rx[3]), Some(Err((UpstreamReason::InDoubt, Some(4), "p4".into()))));
    assert_eq!(texts(b.take(10)), ["3:p5"], "new messages continue at next");
    let s = b.stats();
    assert_eq!((s.in_doubt, s.resends, s.unacked, s.unacked_bytes), (2, 0, 2, 4));
    b.ack(3);
    assert_eq!(pending(&mut rx), 0);
    assert_eq!(outcome(&mut rx[4]), None, "already taken");
}

#[test]
fn in_doubt_resend_and_drop_policies() {
    let mut b = buf(InDoubt::Resend);
    let mut rx = push(&mut b, 3);
    b.welcome(false, up(1, 0, 7, true));
    b.take(10);
    assert!(b.welcome(false, up(2, 1, 8, false)).is_empty());
    assert_eq!(texts(b.take(10)), ["2:p2", "3:p3"]);
    assert_eq!((b.stats().in_doubt, b.stats().resends), (2, 2));
    b.ack(3);
    assert!(rx.iter_mut().all(|r| outcome(r) == Some(Ok(()))));

    let mut b = buf(InDoubt::Drop);
    let mut rx = push(&mut b, 3);
    b.welcome(false, up(1, 0, 7, true));
    b.take(2);
    assert!(b.welcome(false, up(2, 1, 8, false)).is_empty());
    assert_eq!(outcome(&mut rx[0]), Some(Ok(())));
    assert_eq!(outcome(&mut rx[1]), Some(Err((UpstreamReason::Dropped, Some(2), "p2".into()))));
    assert_eq!(texts(b.take(10)), ["2:p3"]);
    assert_eq!((b.stats().in_doubt, b.stats().dropped, b.stats().resends), (1, 1, 0));
}

#[test]
fn a_new_session_puts_everything_sent_in_doubt() {
    let mut b = buf(InDoubt::Report);
    let mut rx = push(&mut b, 3);
    b.welcome(false, up(1, 0, 7, true));
    b.take(2);
    b.ack(1);
    // The session expired: seqs restart at 1 on another backend connection.
    let report = b.welcome(true, up(1, 0, 9, true));
    assert_eq!(report, [UpMessage { seq: 2, payload: "p2".into() }]);
    assert_eq!(outcome(&mut rx[1]), Some(Err((UpstreamReason::InDoubt, Some(2), "p2".into()))));
    assert_eq!(texts(b.take(10)), ["1:p3"]);
    assert_eq!(b.stats().acked_seq, 0);
}

#[test]
fn end_fails_what_was_not_written() {
    let mut b = buf(InDoubt::Report);
    let mut rx = push(&mut b, 4);
    b.welcome(false, up(1, 0, 7, true));
    b.take(3);
    b.end(Some(2));
    assert_eq!(outcome(&mut rx[1]), Some(Ok(())));
    assert_eq!(outcome(&mut rx[2]), Some(Err((UpstreamReason::Ended, Some(3), "p3".into()))));
    assert_eq!(outcome(&mut rx[3]), Some(Err((UpstreamReason::Ended, None, "p4".into()))));
    let Err(Push::Stopped(e)) = b.try_push("late".into()) else { panic!() };
    assert_eq!((e.reason, e.payload), (UpstreamReason::Ended, "late".into()));
    let s = b.stats();
    assert_eq!((s.acked, s.ended, s.unacked, s.unacked_bytes), (2, 2, 0, 0));

    // Without `up` in the end, what was sent is in doubt.
    let mut b = buf(InDoubt::Report);
    let mut rx = push(&mut b, 2);
    b.welcome(false, up(1, 0, 7, true));
    b.take(1);
    b.end(None);
    assert_eq!(outcome(&mut rx[0]), Some(Err((UpstreamReason::InDoubt, Some(1), "p1".into()))));
    assert_eq!(outcome(&mut rx[1]), Some(Err((UpstreamReason::Ended, None, "p2".into()))));
}

#[test]
fn bounds_and_stop() {
    let mut b = Buf::new(Upstream { max_unacked: 2, max_unacked_bytes: 10, in_doubt: InDoubt::Report });
    let mut rx = Vec::new();
    rx.push(b.try_push("123456".into()).ok().unwrap());
    assert!(matches!(b.try_push("12345".into()), Err(Push::Full(p)) if p == "12345".into()), "bytes bound");
    rx.push(b.try_push("1234".into()).ok().unwrap());
    assert!(matches!(b.try_push("".into()), Err(Push::Full(_))), "message bound");
    b.welcome(false, up(1, 0, 7, true));
    b.take(10);
    b.ack(2);
    // An oversized message fits an empty buffer.
    rx.push(b.try_push(vec![0u8; 100].into()).ok().unwrap());
    b.stop(UpstreamReason::Closed);
    assert_eq!(outcome(&mut rx[2]), Some(Err((UpstreamReason::Closed, None, vec![0u8; 100].into()))));
    assert!(matches!(b.try_push("x".into()), Err(Push::Stopped(e)) if e.reason == UpstreamReason::Closed));
    // Dropping the buffer completes what it holds.
    let mut b = buf(InDoubt::Report);
    let mut rx = push(&mut b, 1);
    drop(b);
    assert_eq!(outcome(&mut rx[0]), Some(Err((UpstreamReason::Closed, None, "p1".into()))));
}
