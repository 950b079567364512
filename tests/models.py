"""Tiny random-init models built in-process (no side effects on import, unlike conftest)."""


def tiny_bert(layers: int = 2, hidden: int = 32, num_labels: int = 2, eager: bool = True):
    """A random-init BertForSequenceClassification small enough to run in milliseconds."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=96,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        num_labels=num_labels,
    )
    if eager:
        config._attn_implementation = "eager"
    return BertForSequenceClassification(config)


def save_tiny_teacher(folder, dropout: float = 0.1, num_labels: int = 2, layers: int = 4) -> None:
    """A tiny random-init BERT with MiniLM's tokenizer saved as a Hugging Face folder: a base or teacher model
    that launcher runs start from in seconds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from conftest import minilm_path

    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)


def tiny_model(arch: str, layers: int = 2, eager: bool = False):
    """Tiny random-init classifier of each supported family, with its natural layer prefix."""
    import transformers as tf

    small = dict(vocab_size=96, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64)
    if arch == "bert":
        return tiny_bert(layers=layers, eager=eager)
    if arch in ("roberta", "xlm-roberta"):
        config_class, model_class = {
            "roberta": (tf.RobertaConfig, tf.RobertaForSequenceClassification),
            "xlm-roberta": (tf.XLMRobertaConfig, tf.XLMRobertaForSequenceClassification),
        }[arch]
        config = config_class(**small, max_position_embeddings=40)
    elif arch == "electra":
        config = tf.ElectraConfig(**small, embedding_size=16, max_position_embeddings=32)
        model_class = tf.ElectraForSequenceClassification
    elif arch == "deberta-v2":
        config = tf.DebertaV2Config(
            **small,
            max_position_embeddings=32,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=8,
            max_relative_positions=16,
        )
        model_class = tf.DebertaV2ForSequenceClassification
    elif arch == "distilbert":
        config = tf.DistilBertConfig(
            vocab_size=96, dim=32, n_layers=layers, n_heads=2, hidden_dim=64, max_position_embeddings=32
        )
        model_class = tf.DistilBertForSequenceClassification
    elif arch == "gpt2":
        config = tf.GPT2Config(
            vocab_size=96,
            n_embd=32,
            n_layer=layers,
            n_head=2,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        model_class = tf.GPT2ForSequenceClassification
    else:
        raise ValueError(arch)
    if eager:
        config._attn_implementation = "eager"
    return model_class(config)


def tiny_resnet(num_labels: int = 3):
    """A random-init two-stage ResNetForImageClassification (basic blocks): Conv2d + BatchNorm2d to prune."""
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=num_labels
    )
    return ResNetForImageClassification(config)


def fine_tune_tiny_teacher(folder, train_csv: str, steps: int = 60, lr: float = 3e-3) -> None:
    """Fine-tune the tiny teacher saved in ``folder`` (``save_tiny_teacher``) on a ``text,label`` CSV of topic
    headlines (``text_files.news_csv``) and save it back: a teacher that knows the task, so that a student
    distilled from it can be held to a quality floor."""
    import csv

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with open(train_csv, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    names = sorted({row["label"] for row in rows})
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer([row["text"] for row in rows], padding=True, return_tensors="pt")
    labels = torch.tensor([names.index(row["label"]) for row in rows])
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(rows), (16,), generator=generator)
        loss = model(**{key: value[batch] for key, value in encoded.items()}, labels=labels[batch]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
    model.save_pretrained(folder)
