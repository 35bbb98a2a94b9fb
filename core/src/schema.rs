// @generated automatically by Diesel CLI.

diesel::table! {
    audit_log (id) {
        id -> Uuid,
        actor_id -> Nullable<Uuid>,
        action -> Text,
        entity_type -> Text,
        entity_id -> Nullable<Uuid>,
        before -> Nullable<Jsonb>,
        after -> Nullable<Jsonb>,
        request_id -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    canary_runs (key) {
        key -> Text,
        runs -> Int4,
        last_attempt -> Int4,
        effects -> Int4,
        completed_at -> Nullable<Timestamptz>,
        worker -> Nullable<Text>,
        fixed -> Bool,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    cron_runs (schedule, tick) {
        schedule -> Text,
        tick -> Timestamptz,
        claimed_by -> Text,
        started_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        outcome -> Nullable<Text>,
    }
}

diesel::table! {
    dead_jobs (id) {
        id -> Int8,
        queue -> Text,
        task_id -> Text,
        payload -> Jsonb,
        attempts -> Int4,
        last_error -> Text,
        died_at -> Timestamptz,
        requeued_at -> Nullable<Timestamptz>,
        job_key -> Text,
    }
}

diesel::table! {
    email_log (dedupe_key) {
        dedupe_key -> Text,
        kind -> Text,
        recipient -> Text,
        message_id -> Text,
        status -> Text,
        attempts -> Int4,
        created_at -> Timestamptz,
        sent_at -> Nullable<Timestamptz>,
        claimed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    idempotency_keys (scope, endpoint, key) {
        scope -> Text,
        endpoint -> Text,
        key -> Text,
        fingerprint -> Bytea,
        response_status -> Int2,
        response_body -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    identity_groups (id) {
        id -> Uuid,
        merged_into_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    identity_merges (id) {
        id -> Uuid,
        surviving_group_id -> Uuid,
        merged_group_id -> Uuid,
        reason -> Text,
        nodes_moved -> Int4,
        touchpoints_moved -> Int4,
        merged_at -> Timestamptz,
    }
}

diesel::table! {
    identity_nodes (id) {
        id -> Uuid,
        group_id -> Uuid,
        kind -> Text,
        key -> Text,
        merchant_id -> Nullable<Uuid>,
        user_id -> Nullable<Uuid>,
        validation_data -> Nullable<Jsonb>,
        linked_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    ledger_accounts (id) {
        id -> Uuid,
        user_id -> Nullable<Uuid>,
        kind -> Text,
        #[max_length = 3]
        currency -> Bpchar,
        balance_minor -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        stripe -> Int2,
    }
}

diesel::table! {
    ledger_transfers (id) {
        id -> Text,
        debit_account_id -> Uuid,
        credit_account_id -> Uuid,
        amount_minor -> Int8,
        #[max_length = 3]
        currency -> Bpchar,
        kind -> Text,
        user_id -> Nullable<Uuid>,
        purchase_id -> Nullable<Uuid>,
        reward_id -> Nullable<Uuid>,
        payout_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    link_quality_daily (merchant_id, day) {
        merchant_id -> Uuid,
        day -> Date,
        matched -> Int8,
        mismatched -> Int8,
    }
}

diesel::table! {
    merchants (id) {
        id -> Uuid,
        name -> Text,
        status -> Text,
        publishable_key -> Text,
        webhook_secret_encrypted -> Bytea,
        previous_secret_encrypted -> Nullable<Bytea>,
        previous_secret_expires_at -> Nullable<Timestamptz>,
        webhook_rate_limit_per_minute -> Nullable<Int4>,
        version -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    monthly_cap_usage (user_id, offer_id, month, currency) {
        user_id -> Uuid,
        offer_id -> Uuid,
        month -> Date,
        used_minor -> Int8,
        #[max_length = 3]
        currency -> Bpchar,
    }
}

diesel::table! {
    offer_activations (id) {
        id -> Uuid,
        offer_id -> Uuid,
        merchant_id -> Uuid,
        activated_at -> Timestamptz,
        deactivated_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    offers (id) {
        id -> Uuid,
        merchant_id -> Uuid,
        name -> Text,
        rate_bps -> Int4,
        max_cashback_minor -> Nullable<Int8>,
        monthly_cap_minor -> Nullable<Int8>,
        starts_at -> Nullable<Timestamptz>,
        ends_at -> Nullable<Timestamptz>,
        active -> Bool,
        version -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        #[max_length = 3]
        currency -> Nullable<Bpchar>,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        queue -> Text,
        task_id -> Text,
        payload -> Jsonb,
        attempt -> Int4,
        run_at -> Timestamptz,
        next_attempt_at -> Timestamptz,
        relay_attempts -> Int4,
        last_error -> Nullable<Text>,
        sent_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        outcome -> Nullable<Text>,
        checked_at -> Nullable<Timestamptz>,
        recovered -> Int4,
        job_key -> Text,
        chain -> Text,
    }
}

diesel::table! {
    payouts (id) {
        id -> Uuid,
        user_id -> Uuid,
        amount_minor -> Int8,
        #[max_length = 3]
        currency -> Bpchar,
        status -> Text,
        destination_type -> Text,
        destination_encrypted -> Bytea,
        destination_masked -> Text,
        provider_reference -> Nullable<Text>,
        failure_reason -> Nullable<Text>,
        provider_attempts -> Int4,
        submitted_at -> Nullable<Timestamptz>,
        completed_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    purchase_events (id) {
        id -> Int8,
        merchant_id -> Uuid,
        order_id -> Text,
        kind -> Text,
        detail -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    purchases (id) {
        id -> Uuid,
        merchant_id -> Uuid,
        order_id -> Text,
        amount_minor -> Int8,
        #[max_length = 3]
        currency -> Bpchar,
        status -> Text,
        purchased_at -> Timestamptz,
        customer_ref -> Nullable<Text>,
        purchase_token -> Nullable<Text>,
        sub_id -> Nullable<Text>,
        identity_group_id -> Nullable<Uuid>,
        user_id -> Nullable<Uuid>,
        attribute_after -> Timestamptz,
        rewards_processed_at -> Nullable<Timestamptz>,
        status_reason -> Nullable<Text>,
        merchant_decision -> Nullable<Text>,
        merchant_decision_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        waiting_since -> Nullable<Timestamptz>,
        settle_due_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    rewards (id) {
        id -> Uuid,
        purchase_id -> Uuid,
        attribution_seq -> Int4,
        user_id -> Uuid,
        offer_id -> Uuid,
        touchpoint_id -> Nullable<Uuid>,
        identity_group_id -> Nullable<Uuid>,
        amount_minor -> Int8,
        #[max_length = 3]
        currency -> Bpchar,
        status -> Text,
        fraud_score -> Float8,
        fraud_reasons -> Jsonb,
        confirmed_at -> Nullable<Timestamptz>,
        reversed_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        flagged -> Bool,
        hold_until -> Timestamptz,
        review -> Nullable<Text>,
        reviewed_by -> Nullable<Uuid>,
        reviewed_at -> Nullable<Timestamptz>,
        fraud_explanation -> Nullable<Text>,
        fraud_explanation_model -> Nullable<Text>,
        fraud_explained_at -> Nullable<Timestamptz>,
        fraud_explanation_status -> Nullable<Text>,
    }
}

diesel::table! {
    touchpoints (id) {
        id -> Uuid,
        group_id -> Uuid,
        merchant_id -> Uuid,
        offer_id -> Nullable<Uuid>,
        anon_id -> Text,
        landing_url -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    user_stats (user_id, currency) {
        user_id -> Uuid,
        #[max_length = 3]
        currency -> Bpchar,
        total_minor -> Int8,
        purchase_count -> Int8,
        average_minor -> Int8,
        highest_day -> Nullable<Date>,
        highest_day_minor -> Int8,
        computed_at -> Timestamptz,
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        email -> Text,
        password_hash -> Text,
        role -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(audit_log -> users (actor_id));
diesel::joinable!(identity_nodes -> identity_groups (group_id));
diesel::joinable!(identity_nodes -> merchants (merchant_id));
diesel::joinable!(identity_nodes -> users (user_id));
diesel::joinable!(ledger_accounts -> users (user_id));
diesel::joinable!(ledger_transfers -> payouts (payout_id));
diesel::joinable!(ledger_transfers -> purchases (purchase_id));
diesel::joinable!(ledger_transfers -> rewards (reward_id));
diesel::joinable!(ledger_transfers -> users (user_id));
diesel::joinable!(link_quality_daily -> merchants (merchant_id));
diesel::joinable!(monthly_cap_usage -> offers (offer_id));
diesel::joinable!(monthly_cap_usage -> users (user_id));
diesel::joinable!(offer_activations -> merchants (merchant_id));
diesel::joinable!(offer_activations -> offers (offer_id));
diesel::joinable!(offers -> merchants (merchant_id));
diesel::joinable!(payouts -> users (user_id));
diesel::joinable!(purchase_events -> merchants (merchant_id));
diesel::joinable!(purchases -> identity_groups (identity_group_id));
diesel::joinable!(purchases -> merchants (merchant_id));
diesel::joinable!(purchases -> users (user_id));
diesel::joinable!(rewards -> identity_groups (identity_group_id));
diesel::joinable!(rewards -> offers (offer_id));
diesel::joinable!(rewards -> purchases (purchase_id));
diesel::joinable!(rewards -> touchpoints (touchpoint_id));
diesel::joinable!(rewards -> users (user_id));
diesel::joinable!(touchpoints -> identity_groups (group_id));
diesel::joinable!(touchpoints -> merchants (merchant_id));
diesel::joinable!(touchpoints -> offers (offer_id));
diesel::joinable!(user_stats -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    audit_log,
    canary_runs,
    cron_runs,
    dead_jobs,
    email_log,
    idempotency_keys,
    identity_groups,
    identity_merges,
    identity_nodes,
    ledger_accounts,
    ledger_transfers,
    link_quality_daily,
    merchants,
    monthly_cap_usage,
    offer_activations,
    offers,
    outbox,
    payouts,
    purchase_events,
    purchases,
    rewards,
    touchpoints,
    user_stats,
    users,
);
