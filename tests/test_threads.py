"""sparsity.threads.one_thread: one CPU thread inside the block, the caller's setting back after it."""

import pytest
import torch

from sparsity.threads import one_thread


def test_one_thread_inside_and_the_previous_count_back_even_after_an_error():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="inside"), one_thread():
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2

        @one_thread()
        def threads() -> int:
            return torch.get_num_threads()

        assert threads() == 1 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
