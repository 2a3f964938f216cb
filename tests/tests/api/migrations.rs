//! Migrations run up → down → up on both backends.

use gridpatrol_server::db::Db;
use gridpatrol_tests::{Backend, both_backends, fresh_database};

async fn migrations_run_up_down_up(backend: Backend) {
    let test_db = fresh_database(backend);
    let db = Db::open(&test_db.url, 2).expect("open");
    assert!(db.has_pending_migrations().expect("pending"));
    let applied = db.migrate().expect("up");
    assert!(!applied.is_empty());
    assert!(!db.has_pending_migrations().expect("pending"));
    db.revert_all().expect("down");
    assert!(db.has_pending_migrations().expect("pending after down"));
    let again = db.migrate().expect("up again");
    assert_eq!(applied, again);
    // The schema works after the round trip.
    let loaded = db
        .write_blocking(gridpatrol_server::demo::load_if_empty)
        .expect("demo after up-down-up");
    assert!(loaded.is_some());
}

both_backends!(migrations_run_up_down_up);

#[tokio::test]
async fn unsupported_database_urls_are_a_clear_startup_error() {
    let err = Db::open("mysql://root:secret@localhost/gp", 1)
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(text.contains("unsupported database URL"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}

/// The change log's move to one entry per document per request keeps what an older version
/// stored: each old row (one change, its hash in hex) becomes an entry of that one change, and the
/// document loads from the log as before. Going back down refuses a log that holds an entry of
/// several changes (the older schema cannot hold one) and changes nothing.
async fn an_older_change_log_becomes_entries_of_one_change(backend: Backend) {
    use automerge::AutoCommit;
    use diesel::prelude::*;
    use gridpatrol_server::db::DbConnection;
    use gridpatrol_server::schema::{devices, grids, sync_changes, sync_documents, users};
    use sync_protocol::schema::{self, Method, NewPatrol};

    let test_db = fresh_database(backend);
    let db = Db::open(&test_db.url, 2).expect("open");
    db.migrate().expect("up");
    db.write_blocking(gridpatrol_server::demo::load_if_empty)
        .expect("demo");
    // Down to before 2026-12-05-120000_change_log_entries, newer ones first.
    let reverted = revert_through(&db, "20261205120000").expect("down");

    // A patrol of three changes, logged as an older server did: a row per change.
    let id = schema::new_id();
    let mut doc = AutoCommit::new();
    schema::create_patrol(
        &mut doc,
        &NewPatrol {
            id: id.clone(),
            grid: "g".into(),
            inspector: 1,
            device: 1,
            method: Method::Routine,
            started_at_ms: 1_795_000_000_000,
        },
    )
    .expect("create");
    for note in ["巡查开始", "河道无异常"] {
        schema::add_note(
            &mut doc,
            &schema::Note {
                at_ms: 1_795_000_060_000,
                text: note.into(),
            },
        )
        .expect("note");
    }
    let changes: Vec<(String, Vec<u8>)> = doc
        .get_changes(&[])
        .into_iter()
        .map(|c| (c.hash().to_string(), c.raw_bytes().to_vec()))
        .collect();
    assert_eq!(changes.len(), 3);
    let heads = doc.get_heads();
    let at = gridpatrol_server::db::now();
    db.write_blocking(|conn| -> Result<(), gridpatrol_server::error::ApiError> {
        let user: i64 = users::table.select(users::id).first(conn)?;
        let grid: i64 = grids::table.select(grids::id).first(conn)?;
        let device: i64 = diesel::insert_into(devices::table)
            .values((
                devices::user_id.eq(user),
                devices::name.eq("旧手机"),
                devices::actor_id.eq("00"),
                devices::enrolled_at.eq(at),
            ))
            .returning(devices::id)
            .get_result(conn)?;
        diesel::insert_into(sync_documents::table)
            .values((
                sync_documents::id.eq(&id),
                sync_documents::kind.eq("patrol"),
                sync_documents::grid_id.eq(grid),
                sync_documents::inspector_id.eq(user),
                sync_documents::heads.eq(heads[0].to_string()),
                sync_documents::change_count.eq(3),
                sync_documents::bytes.eq(0_i64),
                sync_documents::version.eq(0_i64),
                sync_documents::created_at.eq(at),
                sync_documents::updated_at.eq(at),
            ))
            .execute(conn)?;
        for (hash, bytes) in &changes {
            use diesel::sql_types::{BigInt, Binary, Text, Timestamp};
            let sql = match conn {
                DbConnection::Sqlite(_) => {
                    "INSERT INTO sync_changes (doc_id, hash, bytes, actor, device_id, user_id, \
                     received_at) VALUES (?, ?, ?, '00', ?, ?, ?)"
                }
                DbConnection::Postgres(_) => {
                    "INSERT INTO sync_changes (doc_id, hash, bytes, actor, device_id, user_id, \
                     received_at) VALUES ($1, $2, $3, '00', $4, $5, $6)"
                }
            };
            let query = diesel::sql_query(sql)
                .bind::<Text, _>(&id)
                .bind::<Text, _>(hash)
                .bind::<Binary, _>(bytes)
                .bind::<BigInt, _>(device)
                .bind::<BigInt, _>(user)
                .bind::<Timestamp, _>(at);
            match conn {
                DbConnection::Sqlite(c) => query.execute(c)?,
                DbConnection::Postgres(c) => query.execute(c)?,
            };
        }
        Ok(())
    })
    .expect("an older server's rows");

    assert_eq!(db.migrate().expect("up again"), reverted);
    let (entries, loaded) = db
        .run_blocking(|conn| -> Result<_, gridpatrol_server::error::ApiError> {
            let entries: Vec<(Vec<u8>, i32)> = sync_changes::table
                .filter(sync_changes::doc_id.eq(&id))
                .order(sync_changes::seq.asc())
                .select((sync_changes::hashes, sync_changes::change_count))
                .load(conn)?;
            let (stored, _) = gridpatrol_server::sync::load_changes(conn, &id)?;
            Ok((entries, sync_protocol::server::load_stored(stored)))
        })
        .expect("read back");
    let expected: Vec<(Vec<u8>, i32)> = doc
        .get_changes(&[])
        .into_iter()
        .map(|c| (c.hash().0.to_vec(), 1))
        .collect();
    assert_eq!(
        entries, expected,
        "an entry of one change per old row, in order"
    );
    assert_eq!(loaded.expect("loads").get_heads(), heads);

    // An entry of several changes, as a sync now writes: down refuses, and nothing changes.
    db.write_blocking(|conn| -> Result<(), gridpatrol_server::error::ApiError> {
        diesel::update(sync_changes::table.filter(sync_changes::doc_id.eq(&id)))
            .set(sync_changes::change_count.eq(2))
            .execute(conn)?;
        Ok(())
    })
    .expect("a multi-change entry");
    let refused = revert_through(&db, "20261205120000")
        .expect_err("refused")
        .to_string();
    assert!(
        refused.contains("several_changes") || refused.contains("several changes"),
        "{refused}"
    );
    // The newer migrations it had to revert first come back; the refused one never left.
    db.migrate().expect("up again");
    assert!(!db.has_pending_migrations().expect("pending"), "up");
    let kept = db
        .run_blocking(|conn| -> Result<i32, gridpatrol_server::error::ApiError> {
            Ok(sync_changes::table
                .filter(sync_changes::doc_id.eq(&id))
                .select(sync_changes::change_count)
                .first(conn)?)
        })
        .expect("read");
    assert_eq!(kept, 2, "the multi-change entry is as it was");
}

/// Reverts the migrations newer than `version`, newest first, then `version` itself, and returns
/// what it reverted in the order `migrate` runs them again.
fn revert_through(
    db: &Db,
    version: &str,
) -> Result<Vec<String>, gridpatrol_server::error::StartupError> {
    let mut reverted = vec![db.revert_last()?];
    while reverted.last().is_some_and(|v| v != version) {
        reverted.push(db.revert_last()?);
    }
    reverted.reverse();
    Ok(reverted)
}

both_backends!(an_older_change_log_becomes_entries_of_one_change);
