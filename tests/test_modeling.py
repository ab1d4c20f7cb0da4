"""build_optical_model's prompts and column_prompts: training sees the texts as encode_query/encode_document do."""

from __future__ import annotations

import torch
from conftest import tiny_sentence_transformer

from optical_st import OTDistillationLoss, build_optical_model, column_prompts
from optical_st.transport import special_tokens_mask


def _with_prompts(model, **prompts):
    model.prompts = dict(prompts)
    return model


def test_prompts_come_from_the_student_query_and_the_teacher_document_side(tiny_dirs):
    teacher = _with_prompts(tiny_sentence_transformer(tiny_dirs["teacher"]), query="ask: ", document="doc: ")
    student = _with_prompts(tiny_sentence_transformer(tiny_dirs["wide_student"], hidden=48), query="query: ")
    model = build_optical_model(teacher, student)
    assert model.prompts["query"] == "query: " and model.prompts["document"] == "doc: "
    # a copy of the teacher keeps the teacher's own query prompt (multilingual-e5 as its own student)
    assert build_optical_model(teacher).prompts["query"] == "ask: "
    # "passage" is found too (sentence-transformers looks up document, passage, corpus)
    e5_like = _with_prompts(tiny_sentence_transformer(tiny_dirs["teacher"]), query="query: ", passage="passage: ")
    assert build_optical_model(e5_like).prompts["document"] == "passage: "
    # encode_document really prepends the teacher's prompt: same as the teacher encoding "doc: " + text itself
    text = ["god is love"]
    torch.testing.assert_close(
        model.encode_document(text, convert_to_tensor=True),
        teacher.encode(["doc: god is love"], convert_to_tensor=True),
    )


def test_models_without_prompts_get_none(teacher, student):
    model = build_optical_model(teacher, student)
    assert not any(model.prompts.values())
    assert column_prompts(model, ["english", "lrl"]) == {}


def test_column_prompts_follow_the_router_mapping(tiny_dirs):
    e5_like = _with_prompts(tiny_sentence_transformer(tiny_dirs["teacher"]), query="query: ", document="passage: ")
    model = build_optical_model(e5_like)
    assert column_prompts(model, ["english", "chichewa", "negative_1"]) == {
        "english": "passage: ",
        "chichewa": "query: ",
        "negative_1": "passage: ",
    }


def test_prompt_tokens_carry_no_transport_mass(tiny_dirs, bitext):
    e5_like = _with_prompts(tiny_sentence_transformer(tiny_dirs["teacher"]), query="query: ", document="passage: ")
    model = build_optical_model(e5_like)
    loss = OTDistillationLoss(model)
    prompts = column_prompts(model, bitext)
    features = model.preprocess(bitext["lrl"], prompt=prompts["lrl"], task="query")
    mask = loss._exclude_mask(features, loss._student)
    # [CLS] + the prompt's word pieces are excluded; the first content token is not
    n_prompt = int(features["prompt_length"])  # [CLS] query :
    assert n_prompt == 1 + len(model.tokenizer.tokenize("query: "))
    assert mask[:, :n_prompt].all() and not mask[:, n_prompt].any()
    assert torch.equal(
        mask, special_tokens_mask(features["input_ids"], loss._student.special_ids, features["prompt_length"])
    )


def test_word_embeddings_can_be_frozen_in_the_student_only(teacher, student):
    model = build_optical_model(teacher, student, train_word_embeddings=False)
    router = model[0]
    student_bert = router.sub_modules["query"][0].auto_model
    assert not student_bert.get_input_embeddings().weight.requires_grad
    # everything else in the student still trains; the teacher stays frozen
    trainable = {n for n, p in router.sub_modules["query"].named_parameters() if p.requires_grad}
    assert any("encoder.layer.0" in n for n in trainable) and not any("word_embeddings" in n for n in trainable)
    assert not any(p.requires_grad for p in router.sub_modules["document"].parameters())
    assert (
        build_optical_model(teacher, student)[0]
        .sub_modules["query"][0]
        .auto_model.get_input_embeddings()
        .weight.requires_grad
    )
