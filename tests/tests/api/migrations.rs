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
