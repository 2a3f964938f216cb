//! Portable diesel schema: the same tables on SQLite and PostgreSQL (see `migrations/`).

diesel::table! {
    grids (id) {
        id -> BigInt,
        code -> Text,
        name -> Text,
        kind -> Text,
        level -> Text,
        parent_id -> Nullable<BigInt>,
        path -> Text,
        depth -> Integer,
        geometry -> Text,
        min_lon -> Double,
        min_lat -> Double,
        max_lon -> Double,
        max_lat -> Double,
        area_km2 -> Double,
        properties -> Text,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    users (id) {
        id -> BigInt,
        username -> Text,
        display_name -> Text,
        phone -> Nullable<Text>,
        password_hash -> Nullable<Text>,
        is_superuser -> Bool,
        disabled -> Bool,
        created_at -> Timestamp,
    }
}

diesel::table! {
    grid_roles (id) {
        id -> BigInt,
        user_id -> BigInt,
        grid_id -> BigInt,
        role -> Text,
        employment -> Nullable<Text>,
        created_at -> Timestamp,
        granted_by -> Nullable<BigInt>,
    }
}

diesel::table! {
    devices (id) {
        id -> BigInt,
        user_id -> BigInt,
        name -> Text,
        actor_id -> Text,
        enrolled_at -> Timestamp,
        revoked_at -> Nullable<Timestamp>,
        revoked_reason -> Nullable<Text>,
    }
}

diesel::table! {
    enrollment_codes (id) {
        id -> BigInt,
        code_hash -> Text,
        user_id -> BigInt,
        created_by -> Nullable<BigInt>,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
        device_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    sessions (id) {
        id -> BigInt,
        user_id -> BigInt,
        device_id -> Nullable<BigInt>,
        created_at -> Timestamp,
        revoked_at -> Nullable<Timestamp>,
        revoked_reason -> Nullable<Text>,
    }
}

diesel::table! {
    refresh_tokens (id) {
        id -> BigInt,
        session_id -> BigInt,
        token_hash -> Text,
        issued_at -> Timestamp,
        expires_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
        replaced_by -> Nullable<BigInt>,
    }
}

diesel::table! {
    signing_keys (kid) {
        kid -> Text,
        secret -> Text,
        created_at -> Timestamp,
        retired_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    sign_in_throttle (user_id, client) {
        user_id -> BigInt,
        client -> Text,
        failures -> Integer,
        window_start -> Timestamp,
        last_success_at -> Nullable<Timestamp>,
    }
}

diesel::joinable!(grid_roles -> users (user_id));
diesel::joinable!(grid_roles -> grids (grid_id));
diesel::joinable!(devices -> users (user_id));
diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(sign_in_throttle -> users (user_id));
diesel::joinable!(refresh_tokens -> sessions (session_id));

diesel::allow_tables_to_appear_in_same_query!(
    grids,
    users,
    grid_roles,
    devices,
    enrollment_codes,
    sessions,
    refresh_tokens,
    signing_keys,
    sign_in_throttle,
    sync_documents,
    sync_changes,
    patrols,
    problems,
    photos,
    patrol_photos,
    photo_uploads,
    photo_upload_chunks,
    patrol_verdicts,
    week_signoffs,
    compliance_audit,
    console_sessions,
    console_devices,
    sync_snapshots,
    security_events,
    patrol_tracks,
    track_cells,
);

diesel::table! {
    sync_documents (id) {
        id -> Text,
        kind -> Text,
        grid_id -> BigInt,
        inspector_id -> BigInt,
        heads -> Text,
        change_count -> Integer,
        bytes -> BigInt,
        version -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        last_seq -> BigInt,
    }
}

diesel::table! {
    sync_changes (seq) {
        seq -> BigInt,
        doc_id -> Text,
        hashes -> Binary,
        bytes -> Binary,
        actor -> Text,
        device_id -> BigInt,
        user_id -> BigInt,
        received_at -> Timestamp,
        change_count -> Integer,
    }
}

diesel::table! {
    patrols (id) {
        id -> Text,
        grid_id -> BigInt,
        inspector_id -> BigInt,
        device_id -> BigInt,
        method -> Text,
        status -> Text,
        started_at -> Timestamp,
        ended_at -> Nullable<Timestamp>,
        fix_count -> Integer,
        distance_m -> Double,
        photo_count -> Integer,
        note_count -> Integer,
        problem_count -> Integer,
        review_state -> Nullable<Text>,
        review_comment -> Nullable<Text>,
        reviewer_id -> Nullable<BigInt>,
        first_received_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    problems (id) {
        id -> Text,
        grid_id -> BigInt,
        patrol_id -> Text,
        inspector_id -> BigInt,
        category -> Text,
        description -> Text,
        disposition -> Text,
        lon -> Double,
        lat -> Double,
        found_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::joinable!(sync_changes -> sync_documents (doc_id));
diesel::joinable!(sync_changes -> sync_snapshots (doc_id));
diesel::joinable!(sync_documents -> grids (grid_id));
diesel::joinable!(patrols -> grids (grid_id));

diesel::table! {
    photos (sha256) {
        sha256 -> Text,
        bytes -> BigInt,
        format -> Text,
        width -> Integer,
        height -> Integer,
        exif -> Text,
        phash -> Nullable<BigInt>,
        derived -> Text,
        derived_claimed_at -> Nullable<Timestamp>,
        device_id -> BigInt,
        user_id -> BigInt,
        received_at -> Timestamp,
        hashed_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    patrol_photos (patrol_id, sha256) {
        patrol_id -> Text,
        sha256 -> Text,
        grid_id -> BigInt,
        taken_at -> Timestamp,
        caption -> Text,
    }
}

diesel::table! {
    photo_uploads (id) {
        id -> Text,
        sha256 -> Text,
        device_id -> BigInt,
        user_id -> BigInt,
        length -> BigInt,
        received -> BigInt,
        filetype -> Nullable<Text>,
        filename -> Nullable<Text>,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        completed_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    photo_upload_chunks (upload_id, start) {
        upload_id -> Text,
        start -> BigInt,
        stop -> BigInt,
        object -> Text,
    }
}

diesel::table! {
    patrol_verdicts (patrol_id) {
        patrol_id -> Text,
        grid_id -> BigInt,
        inspector_id -> BigInt,
        week -> Nullable<Text>,
        counted -> Bool,
        verdict -> Nullable<Text>,
        version -> BigInt,
        judged_version -> BigInt,
        claimed_at -> Nullable<Timestamp>,
        computed_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    week_signoffs (grid_id, week) {
        grid_id -> BigInt,
        week -> Text,
        signed_by -> BigInt,
        signed_at -> Timestamp,
        late -> Bool,
        record -> Text,
        content_hash -> Text,
    }
}

diesel::table! {
    compliance_audit (grid_id, week, at, action) {
        grid_id -> BigInt,
        week -> Text,
        at -> Timestamp,
        action -> Text,
        user_id -> BigInt,
        reason -> Nullable<Text>,
        content_hash -> Nullable<Text>,
    }
}

diesel::table! {
    console_sessions (token_hash) {
        token_hash -> Text,
        session_id -> BigInt,
        csrf -> Text,
        created_at -> Timestamp,
        expires_at -> Timestamp,
    }
}

diesel::table! {
    console_devices (user_id) {
        user_id -> BigInt,
        device_id -> BigInt,
    }
}

diesel::table! {
    sync_snapshots (doc_id) {
        doc_id -> Text,
        through_seq -> BigInt,
        change_count -> Integer,
        bytes -> Binary,
        created_at -> Timestamp,
    }
}

diesel::table! {
    security_events (id) {
        id -> BigInt,
        at -> Timestamp,
        kind -> Text,
        actor_id -> Nullable<BigInt>,
        target_user_id -> Nullable<BigInt>,
        grid_id -> Nullable<BigInt>,
        client -> Nullable<Text>,
        detail -> Text,
    }
}

diesel::table! {
    patrol_tracks (patrol_id) {
        patrol_id -> Text,
        fixes -> Binary,
    }
}

diesel::table! {
    track_cells (cell, patrol_id) {
        cell -> BigInt,
        patrol_id -> Text,
    }
}
