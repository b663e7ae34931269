"""Every route for torchvision's vit_b_32 built for 64 px; the tests are in tests/families_routes.py."""

from __future__ import annotations

from families_routes import (  # noqa: F401  (the tests and fixtures this file runs)
    family_fixture,
    images,
    test_convert_infers_the_architecture_and_inspect_reads_file_and_folder,
    test_frozen_routes_leave_every_backbone_parameter_bit_identical,
    test_full_fine_tuning_trains_the_backbone,
    test_layer_decay_at_another_input_size,
    test_the_head_rule_made_the_new_head,
    test_the_routes_agree,
    test_the_saved_classifier_reloads_at_its_cards_size_and_evaluates,
)

family = family_fixture("vit_b_32")
