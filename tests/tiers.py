"""The tier of every test module (see tests/conftest.py for what each tier means).

Layering: test infrastructure only; read by the collection hook in tests/conftest.py.
"""

from __future__ import annotations

__all__ = ["TIERS", "TIER_NAMES"]

TIER_NAMES = ("unit", "inprocess", "e2e")

_UNIT = """
    agent_layering approvals_server audit auth auth_claims auth_signature_cache certs changes homewatch
    layering manifest policy quick_check redaction_precheck result_chunks schema_migrations session store
    versions xdisplay links peer_core auth_keys store_layering edges dispatch error_mapping params
    protocol_constants store_same_process audit_cancel audit_linger redaction_memo coalesce audit_failed_batch
    deadlines json_text frames auth_user_cache collector coalesce_send tool_result
"""
_INPROCESS = """
    inprocess_approval inprocess_calls inprocess_list_changed
    approval artifact_headers audit_group_commit confine engine fs_tools mcp_reply oauth_backoff schemas
    shell_tool tray_approval inprocess_approval inprocess_calls agent_hostile_params
"""
_E2E = """
    agent_bench_smoke agent_cli approval_e2e audit_e2e audit_head backpressure_e2e bench_smoke browser_e2e
    browser_more browser_tools cli_messages concurrency_e2e dashboard dashboard_identity
    dashboard_onboarding dashboard_processes demo_confinement fuzz_framing grep_redos identity_e2e install
    limits mcp mcp_conformance mcp_resources metrics node_hostile planner process_planner process_tools
    redaction results_bench_smoke results_dashboard results_e2e results_planner revoke_user
    revoke_user_streams tray tray_approval_x11 tray_gtk tray_x11 tunnel_e2e database_url engines postgres_e2e
    store_bench_smoke store_postgres cluster_e2e cluster_bench_smoke cluster_demo cluster_scale_smoke
    mcp_haproxy enroll_visibility feed_bench_smoke pg_change_feed redis_artifacts replicas_feed_e2e
    shared_backoff shared_calls shared_state_e2e frame_guard
    replica_link_frames shared_calls_interval mcp_json_answer mcp_bench_smoke batched_links tray_xorg_threads
"""

TIERS: dict[str, str] = {
    f"test_{name}": tier
    for tier, names in (("unit", _UNIT), ("inprocess", _INPROCESS), ("e2e", _E2E))
    for name in names.split()
}
