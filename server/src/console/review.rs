//! 通过 / 退回 from the console. A review is written into the patrol's Automerge document as a
//! change of the supervisor's, exactly as a supervisor's phone would: made with an actor bound to
//! a device of theirs (created on their first review from the console, named 网页控制台), and
//! stored through the sync protocol's server half with the same per-change checks (only the
//! `review` field, only by a supervisor of an ancestor grid). The inspector's phone then receives
//! it on its next sync like any change it lacks.

use actix_web::{HttpResponse, web};
use automerge::{ActorId, AutoCommit};
use diesel::prelude::*;
use serde::Deserialize;
use sync_protocol::schema::{self, DocKind, Review, ReviewState};
use sync_protocol::wire::{self, DocPush, SyncRequest};

use super::{ConsoleError, ConsoleUser, redirect};
use crate::app::AppState;
use crate::db::{DbConnection, now};
use crate::error::{ApiError, ApiResult};
use crate::schema::{console_devices, devices, patrols};
use crate::sync::DeviceAuthority;

/// A comment is a few sentences.
const MAX_COMMENT_CHARS: usize = 500;

#[derive(Deserialize)]
pub struct ReviewForm {
    csrf: String,
    /// `accepted` (通过) or `returned` (退回).
    decision: String,
    #[serde(default)]
    comment: String,
}

/// The device (and actor) a user's console reviews are written with; made on first use.
fn console_device(conn: &mut DbConnection, user_id: i64) -> ApiResult<(i64, ActorId)> {
    let found: Option<(i64, String)> = console_devices::table
        .inner_join(devices::table.on(devices::id.eq(console_devices::device_id)))
        .filter(console_devices::user_id.eq(user_id))
        .select((devices::id, devices::actor_id))
        .first(conn)
        .optional()?;
    if let Some((id, actor)) = found {
        let actor = ActorId::try_from(actor.as_str()).map_err(ApiError::internal)?;
        return Ok((id, actor));
    }
    let actor = ActorId::random();
    let id: i64 = diesel::insert_into(devices::table)
        .values((
            devices::user_id.eq(user_id),
            devices::name.eq("网页控制台"),
            devices::actor_id.eq(actor.to_hex_string()),
            devices::enrolled_at.eq(now()),
        ))
        .returning(devices::id)
        .get_result(conn)?;
    diesel::insert_into(console_devices::table)
        .values((
            console_devices::user_id.eq(user_id),
            console_devices::device_id.eq(id),
        ))
        .execute(conn)?;
    Ok((id, actor))
}

/// POST /console/patrols/{id}/review
pub async fn review(
    state: web::Data<AppState>,
    user: ConsoleUser,
    id: web::Path<String>,
    form: web::Form<ReviewForm>,
) -> Result<HttpResponse, ConsoleError> {
    let ReviewForm {
        csrf,
        decision,
        comment,
    } = form.into_inner();
    user.check_csrf(&csrf)?;
    let decision = ReviewState::parse(&decision)
        .ok_or_else(|| ConsoleError::BadRequest("请选择“通过”或“退回”".into()))?;
    let comment = comment.trim().to_string();
    if decision == ReviewState::Returned && comment.is_empty() {
        return Err(ConsoleError::BadRequest(
            "退回时请填写意见，说明需要补充或改正什么。".into(),
        ));
    }
    if comment.chars().count() > MAX_COMMENT_CHARS {
        return Err(ConsoleError::BadRequest(format!(
            "意见最多 {MAX_COMMENT_CHARS} 字"
        )));
    }
    let id = id.into_inner();
    let index = state.index.current();
    let authed = user.authed;
    let patrol_id = id.clone();
    let limits = state.sync_settings.limits;
    let outcome = state
        .db
        .write(move |conn| -> ApiResult<Option<String>> {
            let grid: Option<i64> = patrols::table
                .find(&patrol_id)
                .select(patrols::grid_id)
                .first(conn)
                .optional()?;
            let Some(grid) = grid.and_then(|g| index.get(g)) else {
                return Err(ApiError::not_found("patrol_not_found", "no such patrol"));
            };
            if !authed.can_manage(&index.path_of(grid)) {
                return Err(ApiError::forbidden(
                    "outside_subtree",
                    "only a supervisor of the patrol's grid or above may review it",
                ));
            }
            let (device_id, actor) = console_device(conn, authed.user_id)?;
            let stored = crate::sync::stored::load_one(conn, &patrol_id)?;
            let mut doc = AutoCommit::load(&stored.to_bytes())
                .map_err(ApiError::internal)?
                .with_actor(actor.clone());
            let have = doc.get_heads();
            schema::set_review(
                &mut doc,
                &Review {
                    state: decision,
                    comment,
                    reviewer: authed.user_id,
                    at_ms: chrono::Utc::now().timestamp_millis(),
                },
            )
            .map_err(|e| ApiError::internal(e.to_string()))?;
            let new: Vec<_> = doc
                .get_changes(&have)
                .into_iter()
                .map(|c| serde_bytes::ByteBuf::from(c.raw_bytes().to_vec()))
                .collect();
            let request = SyncRequest {
                v: wire::PROTOCOL_VERSION,
                cursor: Default::default(),
                sent_at_ms: chrono::Utc::now().timestamp_millis(),
                docs: vec![DocPush {
                    id: patrol_id.clone(),
                    kind: DocKind::Patrol,
                    have: have.iter().map(|h| wire::Hash::from(*h)).collect(),
                    changes: new,
                    sync_message: None,
                }],
            };
            let mut authority = DeviceAuthority::new(
                authed.user_id,
                &authed.roles,
                device_id,
                actor,
                index.clone(),
            );
            // Console reviews by a superuser may be anywhere.
            if authed.is_superuser {
                authority.review_paths.push("/".into());
            }
            // Authoring nothing: a review only.
            authority.author_paths.clear();
            let results = crate::sync::store_request(conn, &request, &authority, &limits)?;
            Ok(results
                .into_iter()
                .find_map(|r| r.error.map(|e| format!("{}：{}", e.code, e.message))))
        })
        .await
        .map_err(ConsoleError::from_api)?;
    if let Some(refused) = outcome {
        return Err(ConsoleError::Conflict(format!("审核未能保存（{refused}）")));
    }
    state.wake_judging.notify_one();
    Ok(redirect(&format!("/console/patrols/{id}")))
}
