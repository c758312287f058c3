-- Dreams (e-dream compatible) and one vote per user per dream.

CREATE TABLE dreams (
    uuid uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES users (id),
    name text NOT NULL DEFAULT '',
    description text,
    status text NOT NULL DEFAULT 'none'
        CHECK (status IN ('none', 'queue', 'processing', 'failed', 'processed')),
    media_type text NOT NULL DEFAULT 'video' CHECK (media_type IN ('video', 'image')),
    video text,
    original_video text,
    thumbnail text,
    filmstrip jsonb,
    processed_video_size bigint,
    processed_video_frames integer,
    processed_video_fps double precision,
    processed_media_width integer,
    processed_media_height integer,
    render_duration double precision,
    activity_level double precision NOT NULL DEFAULT 1,
    feature_rank integer NOT NULL DEFAULT 0,
    upvotes integer NOT NULL DEFAULT 0,
    downvotes integer NOT NULL DEFAULT 0,
    nsfw boolean NOT NULL DEFAULT false,
    hidden boolean NOT NULL DEFAULT false,
    ccby_license boolean NOT NULL DEFAULT false,
    source_url text,
    md5 text,
    prompt jsonb,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    deleted_at timestamptz
);
CREATE INDEX dreams_created_idx ON dreams (created_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX dreams_user_idx ON dreams (user_id, created_at DESC) WHERE deleted_at IS NULL;

CREATE TABLE dream_votes (
    dream_uuid uuid NOT NULL REFERENCES dreams (uuid),
    user_id uuid NOT NULL REFERENCES users (id),
    vote smallint NOT NULL CHECK (vote IN (-1, 1)),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dream_uuid, user_id)
);
