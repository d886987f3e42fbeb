"""Shared test set-up: one torch thread, and the tests a developer's inner loop leaves out.

Tests run tiny models, for which thread start-up dominates; with another process busy on the
same cores (a training run, CI neighbours) two threads made small forward passes ~65× slower.

``pytest -m "not slow"`` is the inner loop (about a minute on one core); CI runs everything
(``bash run.sh test``, ``.ci/run``). Besides the tests marked in their files, the tests in
:data:`SLOW` are marked ``slow`` here: the longest ones (file::function, every parameter) of
``pytest -m "not slow" --durations=0`` on one core (``taskset -c 0``), taken until what was left
summed to 45 s — trainers, demos, env sweeps, subprocess imports —, then the longest of a
second run with those left out (``--durations=40``: CLI trainers refusing bad settings, the
batch-equals-loop sweep, two-process bench, trainer kill tests). Those that run a trainer end
to end are also marked ``train``, those driving chromium ``browser``.
"""

import contextlib
import io
import json
import os

import pytest
import torch

SLOW = {
    "test_agents_doc.py": ["test_each_python_block_runs"],
    "test_default_device.py": ["test_a_serve_map_request_names_its_devices"],
    "test_hub.py": ["test_cli_collect_and_explain_from_the_cache", "test_serve_lists_an_hf_agent_given_with_agent"],
    "test_gpu_check.py": ["test_gpu_check_runs_on_the_cpu_against_itself"],
    "test_acer.py": [
        "test_acer_resumes_exactly",
        "test_acer_solves_a_chain_in_a_few_thousand_steps",
        "test_acer_without_trust_region_learns_too",
        "test_buffer_capacity_and_replay_start_are_stable_baselines",
        "test_replay_waits_for_the_segments_then_draws_per_env",
    ],
    "test_agents.py": [
        "test_a_training_checkpoint_zip_loads_with_action_names",
        "test_architecture_error_names_both_architectures",
        "test_checkpoint_of_another_architecture_is_refused",
        "test_checkpoint_with_other_observation_shape_is_refused",
        "test_dqn_resumed_equals_uninterrupted_and_loads_as_q_values",
        "test_finished_run_reexports_the_same_weights_and_ignores_out",
        "test_loaded_agent_reproduces_its_card_score",
        "test_resumed_training_equals_uninterrupted_training",
        "test_reward_scale_scales_training_rewards_not_the_logged_returns",
        "test_training_writes_checkpoint_and_card",
        "test_zoo_agent_reproduces_its_card_score",
    ],
    "test_artifacts.py": [
        "test_a_bench_spec_refuses_data_another_agent_collected",
        "test_another_agents_dataset_is_refused_unless_targets_are_asked",
        "test_cli_evaluate_refuses_another_agents_data_and_takes_targets",
        "test_find_network_gives_the_zoo_explainer_made_for_an_agent",
        "test_zoo_verify_checks_sha256_and_loading",
    ],
    "test_atari_ground_truth.py": [
        "test_breakout_infinite_sets_the_score_back_one_wall_without_negative_rewards",
        "test_collected_atari_states_carry_labels_that_localization_scores",
        "test_labels_mark_the_objects_on_the_observation",
        "test_localization_scores_atari_labels",
        "test_mspacman_envelopes_hold_every_drawn_sprite_and_labels_mark_them",
        "test_ram_envelopes_hold_every_drawn_object_and_labels_mark_them",
        "test_ram_ground_truth_matches_the_rendered_ball_and_paddles",
    ],
    "test_attacks.py": [
        "test_episodes_played_side_by_side_are_the_episodes_played_one_at_a_time",
        "test_return_under_attack_on_the_zoo_agent",
        "test_xrl_attack_command_writes_table_and_figure",
    ],
    "test_bad_inputs_cli.py": [
        "test_an_out_that_is_a_file_is_refused",
        "test_bad_training_settings_are_refused_before_anything_is_written",
        "test_malformed_flags_are_refused_by_the_parser",
    ],
    "test_bench.py": [
        "test_a_changed_setting_reruns_only_that_method",
        "test_a_crashing_job_is_recorded_and_the_others_finish",
        "test_a_method_that_cannot_explain_the_agent",
        "test_a_metric_that_needs_labels_the_data_lacks_is_refused",
        "test_killed_run_resumes_with_only_the_missing_jobs",
        "test_more_bad_specs",
        "test_results_hold_every_job_and_match_evaluate",
        "test_shipped_specs_are_valid_and_cover_every_registered_name",
        "test_unreachable_ray_address_fails_fast",
    ],
    "test_bench_keys.py": [
        "test_a_zoo_network_found_by_fingerprint_is_in_the_key",
    ],
    "test_bench_processes.py": [
        "test_jobs_in_two_processes_give_the_in_process_results",
    ],
    "test_bench_ray.py": [
        "test_a_dying_worker_is_recorded_and_the_other_jobs_finish",
        "test_in_process_and_on_ray_give_identical_results",
    ],
    "test_classifiers.py": [
        "test_classifier_training_resumes_to_the_same_weights",
        "test_torchvision_classifier_builds_without_download_and_loads_user_weights",
    ],
    "test_cli.py": [
        "test_demo_quick",
        "test_demo_without_zoo_agent_trains_one",
        "test_evaluate_writes_consistent_csv_and_json",
        "test_explain_by_default_runs_every_method_that_can_explain_the_agent",
        "test_explain_writes_a_png",
        "test_installed_script",
        "test_malformed_env_setting_in_collect",
        "test_missing_data_file",
        "test_zoo_lists_every_card_with_training_state_score_and_command",
        "test_zoo_lists_the_explainer_networks_with_the_model_they_explain",
    ],
    "test_dataset.py": [
        "test_existing_dataset_is_returned_extended_or_refused",
        "test_ground_truth_settings_may_be_added_to_an_agents_env",
        "test_resume_after_kill_equals_uninterrupted",
        "test_the_same_agent_from_another_path_extends_the_dataset",
    ],
    "test_contributing.py": ["test_a_new_explainer_in_one_file_gets_the_contract_tests"],  # a pytest run in a copy
    "test_demo.py": [
        "test_sections_are_shipped_specs_of_the_papers_agents",
    ],
    "test_digr.py": [
        "test_a_resumed_digr_run_equals_an_uninterrupted_one",
        "test_mismatched_inputs_are_refused",
        "test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint",
        "test_saliency_dataset_holds_the_teachers_kl_maps",
        "test_saliency_dataset_resumes_after_an_interruption",
        "test_training_changes_the_student_and_igr_lowers_its_loss",
        "test_xrl_train_digr_command",
    ],
    "test_docs.py": [  # builds the documentation site (mkdocs build --strict)
        "test_the_reference_lists_every_registered_method_with_its_settings",
        "test_the_reference_pages_cover_every_family",
    ],
    "test_envs_atari.py": [
        "test_action_names",
        "test_check_env",
        "test_env_rebuilt_from_its_recorded_settings_is_identical",
        "test_every_registered_game_builds",
        "test_observation_layout_and_render",
        "test_recorded_settings_hold_defaults_and_differ_between_versions",
        "test_reset_padding_of_the_stack",
        "test_seeded_rollouts_are_reproducible_with_sticky_actions",
        "test_stack_is_oldest_first_and_newest_is_current_screen",
    ],
    "test_envs_more.py": [
        "test_agent_for_other_settings_is_refused_naming_the_difference",
        "test_background_is_the_per_pixel_median_of_random_play",
        "test_check_env_every_registered_env",
        "test_collect_explain_evaluate_with_an_untrained_agent",
        "test_layout_and_render",
        "test_mario_adapter_returns_gymnasium_tuples_and_the_original_frames",
        "test_mario_noops_at_reset_vary_the_start_with_the_seed",
        "test_seeded_rollouts_repeat_every_registered_env",
        "test_settings_are_recorded_and_rebuild_the_same_env",
        "test_vizdoom_label_maps",
        "test_vizdoom_labels_are_exactly_where_the_monster_is_drawn",
        "test_vizdoom_timeout_is_a_truncation",
    ],
    "test_explainers.py": [
        "test_batch_equals_per_sample_loop",
    ],
    "test_fls.py": [
        "test_attention_is_positive_and_shaped_like_the_last_feature_map",
        "test_dense_variants_save_and_load",
        "test_train_agent_command_path_on_red_fetch_green",
        "test_trains_with_sb3_ppo_and_loads_with_identical_actions",
    ],
    "test_gaze.py": [
        "test_trial_states_are_what_a_v4_agent_sees",
    ],
    "test_lean_core.py": [
        "test_core_works_when_heavy_dependencies_are_missing",
        "test_heavy_dependencies_load_on_first_use",
        "test_import_xrl_imports_no_heavy_dependency",
        "test_layers",
    ],
    "test_lime_extremal.py": [
        "test_extremal_batched_default_equals_the_one_state_at_a_time_run_within_tolerance",
        "test_extremal_perturbation_area_follows_the_setting",
        "test_extremal_perturbation_batch_equals_loop_for_every_batch_size",
        "test_extremal_perturbation_preserves_the_region_the_model_reads",
        "test_extremal_masks_do_not_follow_the_last_bit_of_the_smooth_max",
        "test_lime_batch_equals_loop_for_every_batch_size",
    ],
    "test_load_safety.py": [
        "test_an_sb3_zip_is_rebuilt_without_unpickling_and_scores_like_sb3",
        "test_bench_check_and_collect_run_nothing_from_a_zip",
        "test_bench_check_reads_no_weights",
        "test_trust_pickle_is_an_explicit_opt_in_on_the_command_line",
    ],
    "test_metric_protocols.py": [
        "test_quantus_protocol_matches_quantus_itself",
    ],
    "test_quiet_import.py": [
        "test_import_prints_no_gym_notice",
    ],
    "test_report.py": [
        "test_an_agent_with_several_seeds_gets_a_table_of_means_over_seeds",
        "test_report_renders_in_chromium_with_the_numbers_of_the_results",
        "test_report_screenshot_is_not_blank",
    ],
    "test_reproduce.py": [
        "test_cli_refuses_unknown_targets_and_settings",
        "test_free_lunch_numbers_match_an_independent_computation",
        "test_killed_run_resumes_where_it_stopped",
        "test_quick",
    ],
    "test_rexl.py": [
        "test_agent_states_are_the_agents_own_seeded_episodes_and_snapshots_load",
        "test_cli_flags_map_onto_the_training_args",
        "test_rexl_deletion_learning_curve_picks_the_snapshot_on_validation_states",
        "test_sb3_trains_the_same_agent",
        "test_training_resumes_to_the_same_agent",
    ],
    "test_rexl_protocol.py": [
        "test_a_run_recorded_before_the_score_setting_resumes",
    ],
    "test_rlzoo_score.py": [
        "test_the_breakout_cards_rlzoo_score_is_sb3s_pipeline",
    ],
    "test_runs.py": [
        "test_a_crafted_checkpoint_state_runs_nothing_when_resumed",
        "test_a_trainer_killed_inside_a_save_resumes_to_the_uninterrupted_result",
        "test_an_episode_is_rebuilt_from_its_start_and_actions",
        "test_the_card_command_parses_back_to_the_same_settings",
    ],
    "test_train_export.py": [
        "test_export_only_writes_the_checkpoint_reached",
    ],
    "test_visionmask.py": [
        "test_every_mask_network_gives_k_masks_in_0_1",
        "test_explain_all_is_one_forward_pass_and_explain_picks_the_target",
        "test_mismatched_inputs_are_refused",
        "test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint",
        "test_networks_of_another_agent_or_action_count_are_refused",
        "test_one_batch_overfit_drives_the_loss_down",
        "test_stalder_training_exports_its_network",
        "test_training_resumes_to_the_same_result",
        "test_xrl_train_and_counterfactual_commands",
    ],
    "test_watch.py": [
        "test_the_episode_is_the_seeded_greedy_one",
        "test_videos_hold_every_frame_side_by_side",
    ],
    "test_zoo_visionmask.py": [
        "test_learned_explainers_find_their_zoo_network_by_the_agents_weights",
        "test_zoo_visionmask_accuracy_matches_the_card_on_the_validation_split",
    ],
}

#: of SLOW, the tests that run a trainer end to end
TRAIN = {
    "test_demo_without_zoo_agent_trains_one",
    "test_dqn_resumed_equals_uninterrupted_and_loads_as_q_values",
    "test_resumed_training_equals_uninterrupted_training",
    "test_a_resumed_digr_run_equals_an_uninterrupted_one",
    "test_training_changes_the_student_and_igr_lowers_its_loss",
    "test_trains_with_sb3_ppo_and_loads_with_identical_actions",
    "test_training_writes_checkpoint_and_card",
    "test_acer_solves_a_chain_in_a_few_thousand_steps",
    "test_acer_without_trust_region_learns_too",
    "test_acer_resumes_exactly",
    "test_one_batch_overfit_drives_the_loss_down",
    "test_xrl_train_and_counterfactual_commands",
    "test_export_only_writes_the_checkpoint_reached",
    "test_training_resumes_to_the_same_result",
    "test_xrl_train_digr_command",
    "test_train_agent_command_path_on_red_fetch_green",
    "test_training_resumes_to_the_same_agent",
    "test_sb3_trains_the_same_agent",
    "test_classifier_training_resumes_to_the_same_weights",
    "test_stalder_training_exports_its_network",
    "test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint",
    "test_a_trainer_killed_inside_a_save_resumes_to_the_uninterrupted_result",
}
#: of SLOW, the tests that drive Debian's chromium
BROWSER = {"test_report_screenshot_is_not_blank", "test_report_renders_in_chromium_with_the_numbers_of_the_results"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.originalname
        if name in SLOW.get(item.path.name, ()):
            item.add_marker(pytest.mark.slow)
            if name in TRAIN:
                item.add_marker(pytest.mark.train)
            if name in BROWSER:
                item.add_marker(pytest.mark.browser)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """``xrl demo --quick --out DIR`` run once for the whole test run: (exit status, stdout,
    stderr, DIR), shared by the tests that check its results (tests/test_cli.py, tests/test_demo.py).

    Under pytest-xdist the workers share it through the run's base folder, the first one to ask
    running it under a file lock; without xdist it is this session's own."""
    from filelock import FileLock

    from xrl import cli

    root = _shared_root(tmp_path_factory)
    out, done = root / "quick-demo", root / "quick-demo.json"
    with FileLock(str(root / "quick-demo.lock")):
        if not done.exists():
            stdout, stderr = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                try:
                    code = cli.main(["demo", "--quick", "--out", str(out)])
                except SystemExit as exc:
                    code = exc.code
            done.write_text(json.dumps([code, stdout.getvalue(), stderr.getvalue()]))
    code, stdout, stderr = json.loads(done.read_text())
    return code, stdout, stderr, out


def _shared_root(tmp_path_factory):
    """This test run's base folder: above each worker's own under pytest-xdist, this session's
    otherwise."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(scope="session")
def quick_reproduction(tmp_path_factory):
    """``run_target(TARGETS.get(name), DIR, quick=True)`` run once per target for the whole test
    run, as ``quick_reproduction(name)`` -> (the run's record: ``target``, ``tables``, ``figures``,
    ``computed`` rows, and ``again()``: the same command run again on DIR, under the lock that
    keeps two workers from running it at once; DIR), shared by tests/test_reproduce.py and
    tests/test_reproduce_highway.py (the workers of pytest-xdist share it as :func:`quick_demo`
    does)."""
    from types import SimpleNamespace

    from filelock import FileLock

    from xrl.reproduce import TARGETS, run_target

    root = _shared_root(tmp_path_factory)

    def reproduce(name: str):
        out, done = root / f"quick-{name}", root / f"quick-{name}.json"
        lock = FileLock(str(root / f"quick-{name}.lock"))
        with lock:
            if not done.exists():
                run = run_target(TARGETS.get(name), out, quick=True, progress=False)
                record = {"tables": list(run.tables), "figures": list(run.figures), "computed": run.computed}
                done.write_text(json.dumps(record))
        record = json.loads(done.read_text())

        def again():
            with lock:
                return run_target(TARGETS.get(name), out, quick=True, progress=False)

        return SimpleNamespace(target=TARGETS.get(name), again=again, **record), out

    return reproduce
