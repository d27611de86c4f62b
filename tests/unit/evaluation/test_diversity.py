"""distinct-n and reply lengths against counts worked out by hand."""

import pytest

from newllm.evaluation.diversity import DiversityResult, distinct_n, measure_diversity, reply_words


def test_two_replies_counted_by_hand():
    replies = ["i am fine .", "i am ok ."]
    # unigrams: i am fine . i am ok .            -> 8, of which {i, am, fine, ., ok} = 5 distinct
    # bigrams:  (i am)(am fine)(fine .)(i am)(am ok)(ok .) -> 6, of which 5 distinct
    assert measure_diversity(replies) == DiversityResult(distinct_1=5 / 8, distinct_2=5 / 6, mean_words=4.0, n=2, empty=0)


def test_ngrams_do_not_cross_replies():
    # Joined, "a b" + "b a" would add the bigram (b b); per reply there are only (a b) and (b a).
    assert distinct_n(["a b", "b a"], 2) == 2 / 2
    assert distinct_n(["a b", "a b"], 2) == 1 / 2
    # The same words as one reply: (a b)(b a)(a b) -> 2 distinct of 3.
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)


def test_case_is_folded_and_punctuation_is_a_word():
    assert reply_words("Hello , HELLO hello !") == ["hello", ",", "hello", "hello", "!"]
    assert distinct_n(["Hello , HELLO hello !"], 1) == 3 / 5
    assert distinct_n(["Yes", "yes", "YES"], 1) == 1 / 3


def test_whitespace_and_control_characters_split_words():
    assert reply_words("  hi\n\tthere\x00you  ") == ["hi", "there", "you"]
    assert distinct_n(["hi\nhi"], 1) == 1 / 2


def test_empty_replies_count_as_zero_words_and_add_no_ngrams():
    result = measure_diversity(["", "yes", "   "])
    # one unigram in all, no bigram at all: distinct-2 is undefined, not 0
    assert result == DiversityResult(distinct_1=1.0, distinct_2=None, mean_words=1 / 3, n=3, empty=2)


def test_no_replies():
    assert measure_diversity([]) == DiversityResult(distinct_1=None, distinct_2=None, mean_words=None, n=0, empty=0)


def test_higher_n():
    # trigrams of "a b c a b c": (a b c)(b c a)(c a b)(a b c) -> 3 distinct of 4
    assert distinct_n(["a b c a b c"], 3) == 3 / 4
    assert distinct_n(["a b"], 3) is None


@pytest.mark.parametrize("n", [0, -1, 1.5, None])
def test_bad_n_raises(n):
    with pytest.raises(ValueError):
        distinct_n(["a b"], n)


@pytest.mark.parametrize("replies", ["one reply", None, 42])
def test_replies_must_be_a_list_of_str(replies):
    with pytest.raises(TypeError):
        distinct_n(replies, 1)
    with pytest.raises(TypeError):
        measure_diversity(replies)
