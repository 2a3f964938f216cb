//! Who may write what: each rule of the server half, broken once.

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, Automerge, ROOT};
use serde_bytes::ByteBuf;
use sync_protocol::Limits;
use sync_protocol::schema::{
    self, DocKind, Fix, FixSource, Method, NewPatrol, Review, ReviewState,
};
use sync_protocol::server::{Authority, MergeError, load_stored, merge};
use sync_protocol::wire::{DocPush, from_change_hashes};

struct Who {
    user: i64,
    device: i64,
    actor: ActorId,
    author: &'static str,
    review: &'static str,
}

impl Authority for Who {
    fn user_id(&self) -> i64 {
        self.user
    }
    fn device_id(&self) -> i64 {
        self.device
    }
    fn actor(&self) -> &ActorId {
        &self.actor
    }
    fn may_author(&self, grid: &str) -> bool {
        !self.author.is_empty() && grid.starts_with(self.author)
    }
    fn may_review(&self, grid: &str) -> bool {
        !self.review.is_empty() && grid.starts_with(self.review)
    }
}

fn inspector() -> Who {
    Who {
        user: 7,
        device: 70,
        actor: ActorId::from([7u8; 16]),
        author: "522632100001",
        review: "",
    }
}

fn supervisor() -> Who {
    Who {
        user: 2,
        device: 20,
        actor: ActorId::from([2u8; 16]),
        author: "",
        review: "522632100",
    }
}

fn new_patrol(who: &Who, grid: &str) -> AutoCommit {
    let mut doc = AutoCommit::new().with_actor(who.actor.clone());
    schema::create_patrol(
        &mut doc,
        &NewPatrol {
            id: schema::new_id(),
            grid: grid.into(),
            inspector: who.user,
            device: who.device,
            method: Method::Unannounced,
            started_at_ms: 1_795_000_000_000,
        },
    )
    .expect("create");
    doc
}

fn id_of(doc: &AutoCommit) -> String {
    schema::read_identity(doc).expect("identity").id
}

/// Pushes everything of `doc` the server (`stored`) lacks, as `who`.
fn push(stored: &Automerge, doc: &mut AutoCommit, who: &Who) -> Result<Automerge, MergeError> {
    let have = stored.get_heads();
    let changes = doc
        .get_changes(&have)
        .into_iter()
        .map(|mut c| ByteBuf::from(c.bytes().into_owned()))
        .collect();
    let push = DocPush {
        id: id_of(doc),
        kind: DocKind::Patrol,
        have: from_change_hashes(&have),
        changes,
        sync_message: None,
    };
    merge(stored, 0, &push, who, &Limits::default()).map(|(_, doc)| doc)
}

fn code(result: Result<Automerge, MergeError>) -> String {
    match result {
        Ok(_) => "accepted".into(),
        Err(MergeError::Rejected { code, .. }) => code.into(),
        Err(MergeError::Resync(_)) => "resync".into(),
    }
}

fn stored_patrol() -> (Automerge, AutoCommit) {
    let who = inspector();
    let mut doc = new_patrol(&who, "522632100001");
    let stored = push(&Automerge::new(), &mut doc, &who).expect("an honest patrol is accepted");
    (stored, doc)
}

#[test]
fn the_honest_path_is_accepted() {
    let (stored, mut doc) = stored_patrol();
    let fix = Fix {
        at_ms: 1_795_000_010_000,
        lon: 108.52,
        lat: 25.93,
        datum: schema::Datum::Gcj02,
        accuracy_m: Some(8.0),
        source: FixSource::Fused,
        mock: false,
    };
    schema::add_fixes(&mut doc, &[fix]).expect("fix");
    let stored = push(&stored, &mut doc, &inspector()).expect("fix accepted");
    let (stored, review) = returned_by_the_supervisor(&stored);
    assert_eq!(
        schema::read_patrol(&stored).expect("read").review,
        Some(review)
    );
}

/// The supervisor returns the patrol, reviewing on its own copy; the review is accepted.
fn returned_by_the_supervisor(stored: &Automerge) -> (Automerge, Review) {
    let sup = supervisor();
    let mut copy = AutoCommit::load(&stored.save())
        .expect("load")
        .with_actor(sup.actor.clone());
    let review = Review {
        state: ReviewState::Returned,
        comment: "轨迹太短".into(),
        reviewer: 2,
        at_ms: 1_795_100_000_000,
    };
    schema::set_review(&mut copy, &review).expect("review");
    let stored = push(stored, &mut copy, &sup).expect("review accepted");
    (stored, review)
}

#[test]
fn a_change_by_another_actor_is_refused() {
    let honest = inspector();
    let mut doc = new_patrol(&honest, "522632100001");
    let forger = Who {
        actor: ActorId::from([9u8; 16]),
        ..inspector()
    };
    assert_eq!(
        code(push(&Automerge::new(), &mut doc, &forger)),
        "actor_mismatch"
    );
}

#[test]
fn an_inspector_may_not_review() {
    let (stored, mut doc) = stored_patrol();
    let review = Review {
        state: ReviewState::Accepted,
        comment: "自己通过".into(),
        reviewer: 7,
        at_ms: 1,
    };
    schema::set_review(&mut doc, &review).expect("review");
    assert_eq!(
        code(push(&stored, &mut doc, &inspector())),
        "review_forbidden"
    );
}

#[test]
fn no_patrol_in_someone_elses_grid() {
    let who = inspector();
    let mut doc = new_patrol(&who, "522632101001");
    assert_eq!(
        code(push(&Automerge::new(), &mut doc, &who)),
        "not_inspector_of_grid"
    );
}

#[test]
fn a_supervisor_writes_only_review() {
    let (stored, _) = stored_patrol();
    let sup = supervisor();
    let mut copy = AutoCommit::load(&stored.save())
        .expect("load")
        .with_actor(sup.actor.clone());
    schema::submit(&mut copy, 1_795_000_999_000).expect("submit");
    assert_eq!(code(push(&stored, &mut copy, &sup)), "field_forbidden");
}

#[test]
fn identity_is_written_once() {
    let (stored, mut doc) = stored_patrol();
    doc.put(ROOT, "grid", "522632101001").expect("put");
    doc.commit();
    assert_eq!(
        code(push(&stored, &mut doc, &inspector())),
        "immutable_field"
    );
    let (stored, mut doc) = stored_patrol();
    doc.put(ROOT, "inspector", 8).expect("put");
    doc.commit();
    assert_eq!(
        code(push(&stored, &mut doc, &inspector())),
        "immutable_field"
    );
}

#[test]
fn unknown_fields_and_strangers_are_refused() {
    let (stored, mut doc) = stored_patrol();
    doc.put(ROOT, "bonus_points", 100).expect("put");
    doc.commit();
    assert_eq!(code(push(&stored, &mut doc, &inspector())), "unknown_field");

    let (stored, _) = stored_patrol();
    let stranger = Who {
        user: 9,
        device: 90,
        actor: ActorId::from([8u8; 16]),
        author: "522632101",
        review: "522632101",
    };
    let mut copy = AutoCommit::load(&stored.save())
        .expect("load")
        .with_actor(stranger.actor.clone());
    schema::submit(&mut copy, 1).expect("submit");
    assert_eq!(code(push(&stored, &mut copy, &stranger)), "not_author");
}

#[test]
fn a_new_document_names_its_pusher() {
    let who = inspector();
    let mut doc = AutoCommit::new().with_actor(who.actor.clone());
    schema::create_patrol(
        &mut doc,
        &NewPatrol {
            id: schema::new_id(),
            grid: "522632100001".into(),
            inspector: 8, // someone else
            device: who.device,
            method: Method::Routine,
            started_at_ms: 0,
        },
    )
    .expect("create");
    assert_eq!(
        code(push(&Automerge::new(), &mut doc, &who)),
        "identity_mismatch"
    );

    // A broken body: status is not a known value.
    let mut doc = new_patrol(&who, "522632100001");
    doc.put(ROOT, "status", "vanished").expect("put");
    doc.commit();
    assert_eq!(
        code(push(&Automerge::new(), &mut doc, &who)),
        "invalid_document"
    );
}

#[test]
fn pushed_ids_and_kinds_must_match_the_document() {
    let who = inspector();
    let mut doc = new_patrol(&who, "522632100001");
    let changes: Vec<ByteBuf> = doc
        .get_changes(&[])
        .into_iter()
        .map(|mut c| ByteBuf::from(c.bytes().into_owned()))
        .collect();
    let mut wrong = DocPush {
        id: schema::new_id(),
        kind: DocKind::Patrol,
        have: vec![],
        changes: changes.clone(),
        sync_message: None,
    };
    let result = merge(&Automerge::new(), 0, &wrong, &who, &Limits::default()).map(|(_, doc)| doc);
    assert_eq!(code(result), "id_mismatch");
    wrong.id = id_of(&doc);
    wrong.kind = DocKind::Problem;
    let result = merge(&Automerge::new(), 0, &wrong, &who, &Limits::default()).map(|(_, doc)| doc);
    assert_eq!(code(result), "kind_mismatch");
    // A push building on changes the server never saw asks for a resync.
    let stored = load_stored(Vec::new()).expect("empty");
    schema::submit(&mut doc, 5).expect("submit");
    let last = doc
        .get_last_local_change()
        .expect("last")
        .raw_bytes()
        .to_vec();
    let orphan = DocPush {
        id: id_of(&doc),
        kind: DocKind::Patrol,
        have: vec![],
        changes: vec![ByteBuf::from(last)],
        sync_message: None,
    };
    let result = merge(&stored, 0, &orphan, &who, &Limits::default()).map(|(_, doc)| doc);
    assert_eq!(code(result), "resync");
}

fn a_fix(at_ms: i64) -> Fix {
    Fix {
        at_ms,
        lon: 108.52,
        lat: 25.93,
        datum: schema::Datum::Wgs84,
        accuracy_m: Some(8.0),
        source: FixSource::Gnss,
        mock: false,
    }
}

/// Issue 23: fixes added after `submitted` were accepted and counted (a verdict went from 270
/// to 282 fixes). Once submitted, the evidence is closed, in a later push or the same one; the
/// one way back is reopening a patrol a supervisor returned.
#[test]
fn a_submitted_patrol_keeps_its_evidence() {
    let (stored, mut doc) = stored_patrol();
    schema::add_fixes(&mut doc, &[a_fix(1_795_000_010_000)]).expect("fix");
    schema::submit(&mut doc, 1_795_000_020_000).expect("submit");
    let stored = push(&stored, &mut doc, &inspector()).expect("submitted");
    // A later push adding fixes, a note or a photo is refused.
    let mut later = doc.fork().with_actor(inspector().actor);
    schema::add_fixes(&mut later, &[a_fix(1_795_000_030_000)]).expect("fix");
    assert_eq!(
        code(push(&stored, &mut later, &inspector())),
        "patrol_submitted"
    );
    let mut note = doc.fork().with_actor(inspector().actor);
    schema::add_note(
        &mut note,
        &schema::Note {
            at_ms: 1_795_000_030_000,
            text: "补记".into(),
        },
    )
    .expect("note");
    assert_eq!(
        code(push(&stored, &mut note, &inspector())),
        "patrol_submitted"
    );
    // In one push with the submission, after it: refused too.
    let (fresh, mut doc2) = stored_patrol();
    schema::add_fixes(&mut doc2, &[a_fix(1_795_000_010_000)]).expect("fix");
    schema::submit(&mut doc2, 1_795_000_020_000).expect("submit");
    schema::add_fixes(&mut doc2, &[a_fix(1_795_000_030_000)]).expect("fix");
    assert_eq!(
        code(push(&fresh, &mut doc2, &inspector())),
        "patrol_submitted"
    );
    // Reopening without a supervisor's return is refused.
    let mut reopen = doc.fork().with_actor(inspector().actor);
    reopen
        .put(ROOT, schema::field::STATUS, "recording")
        .expect("status");
    assert_eq!(
        code(push(&stored, &mut reopen, &inspector())),
        "patrol_not_returned"
    );
    // A supervisor returns it; the inspector reopens, adds a fix, submits again.
    let (stored, _) = returned_by_the_supervisor(&stored);
    let mut again = AutoCommit::load(&stored.save())
        .expect("load")
        .with_actor(inspector().actor);
    again
        .put(ROOT, schema::field::STATUS, "recording")
        .expect("status");
    let stored = push(&stored, &mut again, &inspector()).expect("reopened after the return");
    schema::add_fixes(&mut again, &[a_fix(1_795_100_010_000)]).expect("fix");
    schema::submit(&mut again, 1_795_100_020_000).expect("submit");
    let stored = push(&stored, &mut again, &inspector()).expect("resubmitted");
    assert_eq!(schema::read_patrol(&stored).expect("patrol").track.len(), 2);
}
