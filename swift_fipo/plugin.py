"""File for ms-swift's ``--external_plugins``: hooks swift-fipo in the process that imports it.

    swift rlhf --rlhf_type grpo --loss_type fipo --external_plugins "$(swift-fipo plugin-path)" ...

Only needed where the automatic activation (the ``.pth`` file) is off or unavailable.
"""

from swift_fipo.integrations.ms_swift import install

install()
